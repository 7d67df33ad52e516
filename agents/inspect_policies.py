"""``collabprune inspect RUN_DIR``: what each agent's policy has learned (DESIGN.md §6).

For each agent, its latest checkpoint (so a run that is still going can be inspected) is rolled out
for one deterministic episode in its env, with the peer block the best pair produced. Per prunable
group: the policy's deterministic keep ratio (after the AMC budget correction), its spread (standard
deviation of the keep ratio over samples of a stochastic policy; 0 for TD3/DDPG), the critic's Q
(SAC/TD3/DDPG, of the deterministic action; the smaller twin) or PPO's state value V, and the
channels the best pair kept. Nothing in the run directory is modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.coordinator import peer_info_from_record
from agents.pruning_agent import ALGORITHMS, MODEL_FILE
from collabprune.config import RunConfig
from collabprune.errors import RunDirError
from collabprune.pruning.prune import kept_channels
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


def inspect_agent(cfg: RunConfig, run: RunDir, role: str, space: RoleSpace, peer_len: int) -> dict[str, Any]:
    """One agent's policy, group by group (see the module docstring).

    :param cfg: the run's config.
    :param run: the run directory (read only).
    :param role: ``generator`` or ``discriminator``.
    :returns: ``{"role", "checkpoint_round", "value_kind", "groups": [...]}``; ``groups`` is empty and
        ``checkpoint_round`` None when the agent has no checkpoint yet.
    """
    latest = run.latest_checkpoint(role)
    out: dict[str, Any] = {"role": role, "algo": cfg.agents.algo, "checkpoint_round": None, "groups": []}
    if latest is None:
        return out
    rounds_done, folder = latest
    model = ALGORITHMS[cfg.agents.algo].load(folder / MODEL_FILE, device="cpu")
    teacher, uniform, best = run.get(TEACHER_ROUND), run.get(UNIFORM_ROUND), run.best()
    env = ChannelPruningEnv(space, peer_len)
    if best is not None and uniform is not None and best["round"] >= 0:
        rho_t = teacher["metrics"].get("rho") if teacher else None
        env.peer = peer_info_from_record(best, role, uniform["metrics"], rho_t, cfg.agents.exchange)
    best_channels = (best or {}).get(f"{role[0]}_channels") or [None] * space.n_groups
    best_ratios = (best or {}).get(f"{role[0]}_ratios") or [None] * space.n_groups
    obs, _ = env.reset()
    value_kind = "Q"
    for t, group in enumerate(space.groups):
        action, _ = model.predict(obs, deterministic=True)
        executed = env.executed_action(np.asarray(action, dtype=np.float32))
        samples = [model.predict(obs, deterministic=False)[0] for _ in range(SPREAD_SAMPLES)]
        spread = float(np.std([space.action_to_ratio(float(np.ravel(a)[0])) for a in samples]))
        value_kind, value = _value(model, obs, executed)
        ratio = space.action_to_ratio(float(np.ravel(executed)[0]))
        out["groups"].append({
            "index": t,
            "name": group.name,
            "channels": group.channels,
            "policy_ratio": ratio,
            "policy_channels": kept_channels(group.channels, ratio, cfg.pruning),
            "spread": spread,
            "value": value,
            "best_ratio": best_ratios[t],
            "best_channels": best_channels[t],
        })
        obs, *_ = env.step(executed)
    out.update(checkpoint_round=rounds_done, value_kind=value_kind)
    return out


def inspect_run(run_dir: Path, roles: list[str] | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Inspect the agents of a finished or running search and write its plots.

    :param run_dir: the run directory.
    :param roles: ``["generator"]``, ``["discriminator"]`` or both (default).
    :param out_dir: folder for the PNGs (default ``RUN_DIR/plots``): ``reward.png``, ``macs.png``
        and ``ratios_<role>.png`` (group-by-round heat map of keep ratios).
    :returns: ``{"run_dir", "rounds", "best", "agents": [...], "plots": [...]}``.
    :raises RunDirError: not a run directory, or no evaluation logged yet.
    """
    from collabprune.plots import plot_ratio_heatmap, plot_search

    cfg = resume_config(run_dir)
    run = RunDir.read(run_dir)
    if not run.records():
        raise RunDirError(f"{run_dir}: no evaluation logged yet")
    spaces = {role: RoleSpace.from_config(role, cfg) for role in ROLES}
    peer_len = peer_length(list(spaces.values()))
    agents = [inspect_agent(cfg, run, role, spaces[role], peer_len) for role in (roles or list(ROLES))]
    records = run.search_records()
    plots_dir = Path(out_dir) if out_dir is not None else run.plots_dir
    plots = plot_search(records, plots_dir, uniform=run.get(UNIFORM_ROUND))
    for role in roles or ROLES:
        names = [g.name for g in spaces[role].groups]
        plots.append(plot_ratio_heatmap(records, role, names, plots_dir / f"ratios_{role}.png"))
    best = run.best()
    return {
        "run_dir": str(run_dir),
        "rounds": len(records),
        "best": None if best is None else {k: best.get(k) for k in ("round", "reward", "g_ratios", "d_ratios")},
        "agents": agents,
        "plots": [str(p) for p in plots],
    }
