"""``collabprune inspect RUN_DIR``: what each agent's policy has learned (DESIGN.md §6).

For each agent, its latest checkpoint (so a run that is still going can be inspected) is rolled out
for one deterministic episode in its env, with the peer block the best pair produced (the generator
sees the discriminator's proposal of that round; the discriminator the generator's, as in the
search). Per prunable group: the policy's deterministic action (a log2 multiplier on the uniform keep
ratio), the keep ratio it asks for and the one executed after the budget projection, its spread
(standard deviation of the requested keep ratio over samples of a stochastic policy; 0 for the
deterministic TD3/DDPG actors, whose exploration noise is not part of the policy), the critic's Q
(TD3/DDPG/SAC, of the executed action; the smaller twin) or PPO's state value V, and the channels
the best pair kept. Nothing in the run directory is modified.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.coordinator import PeerBlocks
from agents.learners import ALGORITHMS
from agents.pruning_agent import MODEL_FILE
from collabprune.config import RunConfig
from collabprune.errors import RunDirError
from collabprune.pruning.prune import kept_channels
from collabprune.pruning.roles import Role, generator_budgets
from collabprune.runs import TEACHER_ROUND, UNIFORM_ROUND, RunDir, resume_config
from envs.channel_env import ChannelPruningEnv
from envs.space import ROLES, RoleSpace, peer_length

#: samples of a stochastic policy per group for the spread
SPREAD_SAMPLES = 200


def _value(model: Any, obs: np.ndarray, action: np.ndarray) -> tuple[str, float]:
    """The algorithm's value estimate at (obs, action): ("Q", min twin Q) or ("V", state value)."""
    obs_t = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        if hasattr(model, "critic") and model.critic is not None:
            act_t = torch.as_tensor(model.policy.scale_action(action), dtype=torch.float32).reshape(1, -1)
            qs = model.critic(obs_t, act_t)
            return "Q", float(torch.min(torch.cat(qs, dim=1)).item())
        return "V", float(model.policy.predict_values(obs_t).item())


def inspect_agent(cfg: RunConfig, run: RunDir, role: str, spaces: dict[str, RoleSpace], peer_len: int,
                  budget: float | None = None) -> dict[str, Any]:
    """One agent's policy, group by group (see the module docstring).

    :param cfg: the run's config.
    :param run: the run directory (read only).
    :param role: ``generator`` or ``discriminator``.
    :param spaces: both roles' spaces.
    :param peer_len: the peer block's action length.
    :param budget: a multi-budget search's generator budget the generator's policy is rolled out at
        (its observation holds the budget), with that budget's best pair as the peer context;
        ``None``: the primary budget and ``best.json``.
    :returns: ``{"role", "budget", "algo", "checkpoint_round", "value_kind", "executed_macs_fraction",
        "groups": [...]}``; ``groups`` is empty and ``checkpoint_round`` None when the agent has no
        checkpoint yet.
    """
    space = spaces[role] if budget is None else spaces[role].at_budget(budget)
    latest = run.latest_checkpoint(role)
    out: dict[str, Any] = {"role": role, "budget": budget, "algo": cfg.agents.algo, "checkpoint_round": None,
                           "groups": []}
    if latest is None:
        return out
    rounds_done, folder = latest
    model = ALGORITHMS[cfg.agents.algo].load(folder / MODEL_FILE, device="cpu")
    if budget is None:
        best = run.read_best() or run.best()
    else:
        best = run.front_entry(budget) or run.best(budget)
    peer = None
    if best is not None and run.get(TEACHER_ROUND) is not None and run.get(UNIFORM_ROUND) is not None:
        blocks = PeerBlocks(cfg, run, spaces)
        short = Role.of(space.role.peer, cfg).short
        nxt = max(0, int(best.round or 0)) + (0 if not space.role.leads else 1)
        peer = blocks.block(role, nxt, best.slot or 0, best.ratios(short) or None, same_round=not space.role.leads)
    own = Role.of(role, cfg).short
    best_channels = (best.channels(own) if best is not None else None) or [None] * space.n_groups
    best_ratios = (best.ratios(own) if best is not None else None) or [None] * space.n_groups
    env = ChannelPruningEnv(space, peer_len, submit=None)
    obs, _ = env.reset(options={"peer": peer} if peer is not None else None)
    observations, actions, spreads = [], [], []
    info: dict[str, Any] = {}
    for _ in range(space.n_decisions):
        action, _ = model.predict(obs, deterministic=True)
        samples = [model.predict(obs, deterministic=False)[0] for _ in range(SPREAD_SAMPLES)]
        spreads.append(float(np.std([space.action_to_ratio(float(np.ravel(a)[0])) for a in samples])))
        actions.append(float(np.ravel(action)[0]))
        observations.append(obs)
        obs, _, _, _, info = env.step(np.asarray(action, dtype=np.float32))
    executed = env.executed_actions()
    decision_of = {g: k for k, groups in enumerate(space.decisions) for g in groups}
    value_kind = "Q"
    for t, group in enumerate(space.groups):
        k = decision_of[t]
        value_kind, value = _value(model, observations[k], np.array([executed[k]], dtype=np.float32))
        out["groups"].append({
            "index": t,
            "name": group.name,
            "channels": group.channels,
            "decision": k,
            "action": actions[k],
            "requested_ratio": info["requested"][t],
            "policy_ratio": info["ratios"][t],
            "policy_channels": kept_channels(group.channels, info["ratios"][t], cfg.pruning),
            "spread": spreads[k],
            "value": value,
            "best_ratio": best_ratios[t],
            "best_channels": best_channels[t],
        })
    out.update(checkpoint_round=rounds_done, value_kind=value_kind, executed_macs_fraction=info["macs_fraction"])
    return out


def inspect_run(run_dir: Path, roles: list[str] | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Inspect the agents of a finished or running search and write its plots.

    :param run_dir: the run directory.
    :param roles: ``["generator"]``, ``["discriminator"]`` or both (default).
    :param out_dir: folder for the PNGs (default ``RUN_DIR/plots``): ``reward.png``, ``macs.png``,
        ``ratios_<role>.png`` (group-by-round heat map of keep ratios) and ``front.png`` (quality
        against MACs and measured latency of every candidate, the front highlighted:
        :mod:`collabprune.front`).
    :returns: ``{"run_dir", "rounds", "best", "front", "agents": [...], "plots": [...]}``; a
        multi-budget search's generator appears once per budget in ``agents``.
    :raises RunDirError: not a run directory, or no evaluation logged yet.
    """
    from collabprune.front import front_points, measure_front_latency, plot_front
    from collabprune.plots import plot_ratio_heatmap, plot_search

    cfg = resume_config(run_dir)
    run = RunDir.read(run_dir)
    if not run.records():
        raise RunDirError(f"{run_dir}: no evaluation logged yet")
    spaces = {role: RoleSpace.from_config(role, cfg) for role in ROLES}
    peer_len = peer_length(list(spaces.values()))
    multi = cfg.search.budgets is not None
    agents = [inspect_agent(cfg, run, role, spaces, peer_len, budget)
              for role in (roles or list(ROLES))
              for budget in (generator_budgets(cfg) if multi and Role.of(role, cfg).leads else (None,))]
    records = run.search_records()
    plots_dir = Path(out_dir) if out_dir is not None else run.plots_dir
    plots = plot_search(records, plots_dir, uniform=run.get(UNIFORM_ROUND))
    for role in roles or ROLES:
        names = [g.name for g in spaces[role].groups]
        plots.append(plot_ratio_heatmap(records, role, names, plots_dir / f"ratios_{role}.png"))
    best = run.read_best() or run.best()
    winners = [(int(r.round or 0), r.slot or 0) for r in run.read_front()] or (
        [(int(best.round or 0), best.slot or 0)] if best is not None else [])
    teacher = run.get(TEACHER_ROUND)
    logged = run.records()
    points = measure_front_latency(cfg, front_points(logged), logged, winners)
    plots.append(plot_front(points, plots_dir / "front.png", teacher.metrics.fd_metric if teacher else "FD", winners))
    return {
        "run_dir": str(run_dir),
        "rounds": len(records),
        "best": None if best is None else {
            "round": best.round, "slot": best.slot, "reward": best.reward,
            "reeval": best.reeval.to_dict() if best.reeval is not None else None,
            "g_ratios": best.g_ratios, "d_ratios": best.d_ratios},
        "front": [dataclasses.asdict(p) for p in sorted(points, key=lambda p: p.g_macs_fraction) if p.on_front],
        "agents": agents,
        "plots": [str(p) for p in plots],
    }
