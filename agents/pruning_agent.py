"""``PruningAgent``: one role's Stable-Baselines3 learner and its N environments, as a Ray actor.

The agent builds N :class:`~envs.channel_env.ChannelPruningEnv` (one per slot: N = candidates per
round) inside a :class:`~agents.vec_env.RoundVecEnv`, which submits the N proposals of a round to
the Coordinator together and blocks (with a timeout) for the N rewards (the team's; the D agent's is its
adversarial pull for paired data by default, ``reward.w_team_d`` / ``reward.w_pull_d``), then runs ``learn()``
for the remaining rounds (``reset_num_timesteps=False`` so a resumed learner neither resets its
counters nor replays warm-up). Algorithms: TD3 (default), DDPG, SAC (:mod:`agents.learners`), PPO.

Resources (2-core machines, DESIGN.md §5 pitfalls): an agent reserves no logical CPU
(``AGENT_NUM_CPUS = 0``) and uses one torch thread; neither does the Coordinator. The agents are idle
(blocked on the Coordinator) while the evaluators work, and the evaluators are idle while the agents
train, so the evaluators may take every core (one evaluator per core without GPUs).

Checkpoints (``checkpoints/<role>/round_XXXXXX/``: ``model.zip``, ``replay_buffer.pkl``,
``agent.json``) are written every ``search.checkpoint_every`` rounds, between rounds (at the start of a
rollout, after the previous round's transitions are stored and trained on), and at the end; see
:meth:`collabprune.runs.RunDir.commit_checkpoint` for atomicity.

Resume protocol: a resumed agent loads its latest checkpoint (round ``c``) and replays rounds
``c..k-1`` that are already in the evaluation log. In a replayed round each env executes its slot's
*logged* ratios (whatever the policy samples) and the Coordinator answers with the logged rewards and
peer blocks, so the replay buffer receives exactly the (obs, executed action, reward) transitions of
the original run, and exploration draws are seeded by (seed, timestep). PPO stores its sampled action
(SB3's own convention), so a replayed PPO round pairs the logged reward with a resampled action.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import ray
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, configure

from agents.learners import ALGORITHMS, EpisodeCreditMixin, algo_kwargs, learns_during_evaluation
from agents.vec_env import RoundVecEnv
from collabprune.config import RunConfig
from collabprune.pruning.roles import ROLE_NAMES
from envs.channel_env import ChannelPruningEnv, PeerInfo
from envs.space import RoleSpace, peer_length

#: Logical CPUs reserved by each agent actor: none (idle while the evaluators work; one torch thread).
AGENT_NUM_CPUS = 0.0

MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
STATE_FILE = "agent.json"


class CoordinatorLink(Protocol):
    """What an agent needs from the Coordinator (a Ray handle wrapper, or a local double)."""

    def submit(self, role: str, round_index: int, proposals: list[dict[str, Any]], agent_s: float,
               while_waiting: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Hand in a round's proposals; the replies. ``while_waiting`` runs after the proposals are
        handed in and before the replies are awaited (the agent's learning during evaluation)."""
        ...

    def peers(self, role: str, round_index: int) -> list[dict[str, Any]]: ...

    def logged_proposals(self, role: str) -> dict[int, dict[int, dict[str, Any]]]: ...


class RayCoordinatorLink:
    """:class:`CoordinatorLink` over a Coordinator actor handle; every call has a timeout.

    :param handle: the Coordinator actor.
    :param timeout_s: longest wait for one call (a round: the peer's turn plus the evaluations).
    """

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def _get(self, ref: Any, what: str) -> Any:
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"coordinator did not answer {what} within {self.timeout_s:.0f} s "
                               "(search.round_timeout_s sets it)") from None

    def submit(self, role: str, round_index: int, proposals: list[dict[str, Any]], agent_s: float,
               while_waiting: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        ref = self.handle.submit.remote(role, round_index, proposals, agent_s)
        if while_waiting is not None:
            while_waiting()
        return self._get(ref, f"round {round_index} of the {role}")

    def peers(self, role: str, round_index: int) -> list[dict[str, Any]]:
        return self._get(self.handle.peers.remote(role, round_index), f"the peer blocks of round {round_index}")

    def logged_proposals(self, role: str) -> dict[int, dict[int, dict[str, Any]]]:
        raw = self._get(self.handle.logged_proposals.remote(role), "logged_proposals")
        return {int(s): {int(k): v for k, v in rounds.items()} for s, rounds in raw.items()}


class _RoleRound:
    """The :class:`~agents.vec_env.RoundLink` of one agent: its role bound to the Coordinator link."""

    def __init__(self, agent: "AgentCore") -> None:
        self.agent = agent

    def submit(self, round_index: int, proposals: list[dict[str, Any]]) -> list[tuple[float, PeerInfo]]:
        return self.agent.submit_round(round_index, proposals)

    def peers(self, round_index: int) -> list[PeerInfo]:
        return [PeerInfo.from_dict(p) for p in self.agent.link.peers(self.agent.role, round_index)]


# ------------------------------------------------------------------------------ callback
class SearchCallback(BaseCallback):
    """Checkpoints between rounds, TensorBoard scalars per round, and an exact round count.

    :param agent: the agent whose learner this callback is attached to.
    """

    def __init__(self, agent: "AgentCore") -> None:
        super().__init__()
        self.agent = agent

    def _on_rollout_start(self) -> None:
        self.agent.maybe_checkpoint()
        # the round's random streams (minibatches, target noise) depend on the round only, so a
        # learner resumed from a checkpoint trains exactly as the original did
        self.model.set_random_seed(self.agent._seed(self.agent.vec_env.round))
        self.agent.learn_before_proposing()

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None and bool(np.asarray(dones).reshape(-1)[0]):
            self.agent.record_round(self.logger)
        # on-policy rollouts may be longer than the rounds left: stop exactly at the end
        return not (self.agent.on_policy and self.agent.vec_env.round >= self.agent.rounds)


# --------------------------------------------------------------------------------- agent
class AgentCore:
    """One role's learner (the body of the :data:`PruningAgent` actor; usable without Ray).

    :param role: ``"generator"`` or ``"discriminator"``.
    :param cfg: the run config as plain data.
    :param run_dir: the run directory (checkpoints, TensorBoard).
    :param link: the Coordinator (:class:`RayCoordinatorLink` or a local double).
    :param peer_len: length of the peer action vector (default: max group count of both roles).
    :param slots: candidates per round (the run's ``slots``; envs of the VecEnv).
    """

    def __init__(self, role: str, cfg: dict[str, Any], run_dir: str, link: CoordinatorLink,
                 peer_len: int | None = None, slots: int = 1) -> None:
        import torch

        from collabprune.runs import RunDir, run_digest

        torch.set_num_threads(1)
        if role not in ROLE_NAMES:
            raise ValueError(f"role {role!r} is not one of {ROLE_NAMES}")
        self.role = role
        self.cfg = RunConfig.model_validate(cfg)
        self.rundir = RunDir(Path(run_dir), run_digest(self.cfg), load_log=False)
        self.link = link
        self.rounds = self.cfg.search.rounds
        self.slots = int(slots)
        self.space = RoleSpace.from_config(role, self.cfg)
        if peer_len is None:
            peer_len = peer_length([self.space, RoleSpace.from_config(self.space.role.peer, self.cfg)])
        # a multi-budget search: the generator's slot s searches budget s mod K (one policy, which
        # observes the budget)
        self.envs = [ChannelPruningEnv(space, peer_len, submit=None) for space in self.space.slot_spaces(self.cfg, self.slots)]
        self.vec_env = RoundVecEnv(self.envs, _RoleRound(self), self.rounds)
        self.on_policy = self.cfg.agents.algo == "ppo"
        self.history: list[dict[str, Any]] = []
        self.times = {"agent_s": 0.0, "wait_s": 0.0, "learn_s": 0.0}
        self._last_reply = time.time()
        self._last_saved = -1
        self.model = self._build_or_load()

    @property
    def env(self) -> ChannelPruningEnv:
        """The first slot's env."""
        return self.envs[0]

    # ----------------------------------------------------------------------- model setup
    def _seed(self, rounds_done: int) -> int:
        return self.cfg.search.seed * 2 + ROLE_NAMES.index(self.role) + 7919 * rounds_done

    def _build_or_load(self) -> BaseAlgorithm:
        algo = ALGORITHMS[self.cfg.agents.algo]
        n = self.space.n_decisions  # steps per episode
        latest = self.rundir.latest_checkpoint(self.role)
        if latest is None:
            start = 0
            kwargs = algo_kwargs(self.cfg.agents, n, self.slots, self._seed(0), self.rundir.evaluations_at_once)
            model = algo("MlpPolicy", self.vec_env, **kwargs)
        else:
            start, folder = latest
            model = algo.load(folder / MODEL_FILE, env=self.vec_env, device="cpu")
            if not self.on_policy and (folder / BUFFER_FILE).is_file():
                model.load_replay_buffer(folder / BUFFER_FILE)
            if model.num_timesteps != start * n * self.slots:
                raise RuntimeError(f"{folder}: {model.num_timesteps} steps saved, expected {start * n * self.slots}")
            model.set_random_seed(self._seed(start))
            self._last_saved = start
        self.start_round = start
        logged = self.link.logged_proposals(self.role)
        for slot, env in enumerate(self.envs):
            env.round = start
            mine = {k: v for k, v in logged.get(slot, {}).items() if k >= start}
            env.set_replay({k: v["ratios"] for k, v in mine.items()}, {k: v.get("actions") for k, v in mine.items()})
        if isinstance(model, EpisodeCreditMixin):
            model.configure_search(self.cfg.agents, n, self._seed(0), lambda: self.vec_env.last_executed)  # type: ignore[arg-type,return-value]
        model.set_logger(configure(str(self.rundir.tb_dir(self.role)), ["tensorboard"]))
        return model

    # ---------------------------------------------------------------------- env callback
    def submit_round(self, round_index: int, proposals: list[dict[str, Any]]) -> list[tuple[float, PeerInfo]]:
        """Hand the N proposals of a round to the Coordinator; the N (reward, next peer block)."""
        t0 = time.time()
        agent_s = t0 - self._last_reply
        seen = [env.peer for env in self.envs]
        learn = (lambda: self.learn_while_waiting(round_index)) if self.learns_during_evaluation else None
        learned_before = self.times["learn_s"]
        replies = self.link.submit(self.role, round_index, proposals, agent_s, while_waiting=learn)
        self._last_reply = time.time()
        self.times["agent_s"] += agent_s
        self.times["wait_s"] += self._last_reply - t0 - (self.times["learn_s"] - learned_before)
        out = []
        for slot, (proposal, reply) in enumerate(zip(proposals, replies)):
            self.history.append({
                "round": round_index,
                "slot": slot,
                "ratios": list(proposal["ratios"]),
                "requested": list(proposal["requested"]),
                "macs_fraction": proposal["macs_fraction"],
                "reward": reply["reward"],
                "replayed": self.envs[slot].replaying,
                "peer_seen": seen[slot].to_dict(),
                "peer_block": seen[slot].to_vector(self.env.peer_len).tolist(),
            })
            out.append((float(reply["reward"]), PeerInfo.from_dict(reply["peer"])))
        return out

    @property
    def learns_during_evaluation(self) -> bool:
        """Whether this agent trains while its round is evaluated (:func:`agents.learners.learns_during_evaluation`)."""
        return learns_during_evaluation(self.cfg.agents, self.rundir.evaluations_at_once) and isinstance(self.model, EpisodeCreditMixin)

    def learn_before_proposing(self) -> None:
        """Take the first ``agents.steps_before_proposal`` gradient steps of the rounds stored so far."""
        if not self.learns_during_evaluation:
            return
        assert isinstance(self.model, EpisodeCreditMixin)  # on the critical path: counted in agent_s
        self.model.train_round(self.vec_env.round, self.slots, part="before")

    def learn_while_waiting(self, round_index: int, part: str = "during") -> None:
        """Round ``round_index`` is being evaluated: train on rounds ``0..round_index-1`` meanwhile
        (``part="all"`` after the last round, when nothing was taken before proposing).

        The random streams were seeded for this round at the rollout's start (:class:`SearchCallback`),
        so a replayed round trains exactly as the original did. Time spent here is the agent's
        ``learn_s``, not ``agent_s`` (which is on the round's critical path).
        """
        t0 = time.time()
        assert isinstance(self.model, EpisodeCreditMixin)
        self.model.train_round(round_index, self.slots, part=part)
        self.times["learn_s"] += time.time() - t0

    def deterministic_ratios(self) -> list[float]:
        """The allocation the deterministic policy proposes now: one episode of the first slot's env
        (its budget, an empty peer block) with the policy's mean actions, projected as a proposal is.

        :returns: keep ratio per group, network order.
        """
        obs, _ = self.env.reset()
        info: dict[str, Any] = {}
        for _ in range(self.space.n_decisions):
            action, _ = self.model.predict(obs[None], deterministic=True)
            obs, _, _, _, info = self.env.step(action[0])
        return list(info["ratios"])

    def record_round(self, logger: Logger) -> None:
        """Write the finished round's numbers to TensorBoard (called by the SB3 callback)."""
        done = [env.last_result for env in self.envs if env.last_result.get("peer") is not None]
        if not done:
            return
        logger.record("search/round", done[0]["round"])
        logger.record("search/reward_mean", float(np.mean([d["reward"] for d in done])))
        logger.record("search/reward_max", float(np.max([d["reward"] for d in done])))
        logger.record("search/macs_fraction", float(np.mean([d["macs_fraction"] for d in done])))
        if isinstance(self.model, EpisodeCreditMixin):
            from agents.learners import exploration_sigma

            learned = max(0, done[0]["round"] + 1 - self.cfg.agents.warmup_episodes)
            logger.record("search/exploration_sigma", exploration_sigma(self.cfg.agents, learned))

    # --------------------------------------------------------------------- checkpoints
    def maybe_checkpoint(self) -> None:
        """Checkpoint when ``checkpoint_every`` rounds passed since the last one (between rounds)."""
        done = self.vec_env.round
        if done > 0 and done - max(self._last_saved, 0) >= self.cfg.search.checkpoint_every:
            self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        """Save policy (+ replay buffer) for the rounds done so far (atomic; see RunDir)."""
        done = self.vec_env.round

        def write(folder: Path) -> None:
            self.model.save(folder / MODEL_FILE)
            if not self.on_policy:
                self.model.save_replay_buffer(folder / BUFFER_FILE)
            (folder / STATE_FILE).write_text(json.dumps({
                "role": self.role, "rounds_done": done, "num_timesteps": int(self.model.num_timesteps),
                "algo": self.cfg.agents.algo, "slots": self.slots,
            }))

        path = self.rundir.commit_checkpoint(self.role, done, write)
        self._last_saved = done
        return path

    # ------------------------------------------------------------------------------ run
    def run_rounds(self) -> dict[str, Any]:
        """Play and learn until ``search.rounds`` rounds are done; checkpoint at the end.

        :returns: ``{"role", "start_round", "rounds", "history", "times"}``; ``history`` has one
            entry per (round, slot) played by this process (executed and requested ratios, MACs
            fraction, reward, whether it was a replay, and the peer block seen).
        """
        remaining = self.rounds - self.vec_env.round
        if remaining > 0:
            self._last_reply = time.time()
            self.model.learn(
                total_timesteps=remaining * self.space.n_decisions * self.slots,
                callback=SearchCallback(self),
                log_interval=None,
                reset_num_timesteps=False,
            )
            if self.learns_during_evaluation:  # the last round's gradient steps are still pending
                self.model.set_random_seed(self._seed(self.vec_env.round))
                self.learn_while_waiting(self.vec_env.round, part="all")
        if self.vec_env.round != self._last_saved:
            self.save_checkpoint()
        return {
            "role": self.role,
            "start_round": self.start_round,
            "rounds": self.vec_env.round,
            "history": self.history,
            "times": dict(self.times),
        }


class PruningAgentActor(AgentCore):
    """Ray actor body: finds the run's Coordinator by name and builds its :class:`RayCoordinatorLink`.

    :param coordinator: ``(name, namespace)`` of the Coordinator actor. The agent looks it up itself
        (also after a restart, ``search.agent_max_restarts``) rather than receiving a handle: Ray holds a
        handle argument by reference and cannot promise it to a restarted actor.
    """

    def __init__(self, role: str, cfg: dict[str, Any], run_dir: str, coordinator: tuple[str, str],
                 peer_len: int | None = None, slots: int = 1) -> None:
        from agents.coordinator import Deadlines

        name, namespace = coordinator
        timeout = Deadlines.of(RunConfig.model_validate(cfg)).agent_call_s
        link = RayCoordinatorLink(ray.get_actor(name, namespace=namespace), timeout)
        super().__init__(role, cfg, run_dir, link, peer_len, slots)

    def run(self) -> dict[str, Any]:
        """Ray entry point: :meth:`AgentCore.run_rounds`.

        A restarted actor (``search.agent_max_restarts``) is built anew from its latest checkpoint and
        Ray retries this call on it: the rounds logged since that checkpoint are replayed from the log
        (the Coordinator answers them without evaluating), then the search goes on.
        """
        return self.run_rounds()

    def __repr__(self) -> str:
        """``PruningAgent(generator)``: the name Ray's state API and logs show for this actor."""
        return f"PruningAgent({self.role})"


#: The Ray actor class (``num_cpus=AGENT_NUM_CPUS``; one torch thread).
PruningAgent = ray.remote(num_cpus=AGENT_NUM_CPUS)(PruningAgentActor)
