"""``PruningAgent``: one role's Stable-Baselines3 learner and its environment, as a Ray actor.

The agent builds its :class:`~envs.channel_env.ChannelPruningEnv`, whose last step of each episode
submits the proposal to the Coordinator and blocks (with a timeout) for the team reward and the peer's
observation, then runs ``learn()`` for the remaining rounds (``reset_num_timesteps=False`` so a resumed
learner neither resets its counters nor replays warm-up). Algorithms: SAC (default), TD3, DDPG, PPO.

Resources (2-core machines, DESIGN.md §5 pitfalls): each agent reserves ``AGENT_NUM_CPUS = 0.5`` and
uses one torch thread; with the Coordinator at 0 CPUs and one evaluator at 1 CPU the whole search fits
2 CPUs. The agents are idle (blocked on the Coordinator) while the evaluator works, and the evaluator
is idle while they train, so nothing is oversubscribed.

Checkpoints (``checkpoints/<role>/round_XXXXXX/``: ``model.zip``, ``replay_buffer.pkl``,
``agent.json``) are written every ``search.checkpoint_every`` rounds, between rounds (at the start of a
rollout, after the previous round's transitions are stored and trained on), and at the end; see
:meth:`collabprune.runs.RunDir.commit_checkpoint` for atomicity.

Resume protocol: a resumed agent loads its latest checkpoint (round ``c``) and replays rounds
``c..k-1`` that are already in the evaluation log. In a replayed round the env executes the *logged*
ratios (whatever the policy samples) and the Coordinator answers with the logged reward and peer
block, so the replay buffer receives exactly the (obs, action, reward) transitions of the original
run. Off-policy learners store the executed action (:class:`ExecutedActionMixin`; this also stores the
AMC budget-corrected action instead of the raw one). PPO stores its sampled action (SB3's own
convention for clipped actions), so a replayed PPO round pairs the logged reward with a resampled
action; PPO checkpoints only at rollout boundaries, so no partial rollout is ever restored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import ray
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv

from collabprune.config import AgentsConfig, RunConfig
from envs.channel_env import ChannelPruningEnv, PeerInfo
from envs.space import ROLES, RoleSpace, peer_length

#: CPUs reserved by each agent actor (two agents + one 1-CPU evaluator = 2 CPUs).
AGENT_NUM_CPUS = 0.5

MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
STATE_FILE = "agent.json"


class CoordinatorLink(Protocol):
    """What an agent needs from the Coordinator (a Ray handle wrapper, or a local double)."""

    def submit(self, role: str, round_index: int, ratios: list[float], macs_fraction: float,
               agent_s: float) -> dict[str, Any]: ...

    def peer_info(self, role: str, round_index: int) -> dict[str, Any]: ...

    def logged_ratios(self, role: str) -> dict[int, list[float]]: ...


class RayCoordinatorLink:
    """:class:`CoordinatorLink` over a Coordinator actor handle; every call has a timeout.

    :param handle: the Coordinator actor.
    :param timeout_s: longest wait for one call (a round: the peer's turn plus an evaluation).
    """

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def _get(self, ref: Any, what: str) -> Any:
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"coordinator did not answer {what} within {self.timeout_s:.0f} s") from None

    def submit(self, role: str, round_index: int, ratios: list[float], macs_fraction: float,
               agent_s: float) -> dict[str, Any]:
        ref = self.handle.submit.remote(role, round_index, ratios, macs_fraction, agent_s)
        return self._get(ref, f"round {round_index} of the {role}")

    def peer_info(self, role: str, round_index: int) -> dict[str, Any]:
        return self._get(self.handle.peer_info.remote(role, round_index), "peer_info")

    def logged_ratios(self, role: str) -> dict[int, list[float]]:
        return self._get(self.handle.logged_ratios.remote(role), "logged_ratios")


# ----------------------------------------------------------------------------- SB3 learners
class ExecutedActionMixin:
    """Off-policy learner that stores the action the env executes, not the one it sampled.

    ``action_hook(action) -> executed action`` is set by the agent to
    :meth:`ChannelPruningEnv.executed_action` (budget correction, or the logged ratio on replay).
    It is not saved with the model.
    """

    action_hook: Callable[[np.ndarray], np.ndarray] | None = None

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1):  # type: ignore[no-untyped-def]
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]
        if self.action_hook is not None:
            action = self.action_hook(action)
            buffer_action = self.policy.scale_action(action)  # type: ignore[attr-defined]
        return action, buffer_action

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["action_hook"]  # type: ignore[misc]


class SearchSAC(ExecutedActionMixin, SAC):
    """SAC storing executed actions."""


class SearchTD3(ExecutedActionMixin, TD3):
    """TD3 storing executed actions."""


class SearchDDPG(ExecutedActionMixin, DDPG):
    """DDPG storing executed actions."""


#: ``agents.algo`` -> SB3 learner class.
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SearchSAC, "td3": SearchTD3, "ddpg": SearchDDPG, "ppo": PPO}


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def algo_kwargs(agents: AgentsConfig, n_groups: int, rounds: int, checkpoint_every: int, seed: int) -> dict[str, Any]:
    """SB3 constructor keyword arguments for ``agents.algo`` (``agents.extra`` overrides).

    Off-policy (SAC/TD3/DDPG): ``learning_starts = warmup_episodes * n_groups`` random steps,
    one rollout = one episode (``train_freq=(1, "episode")``), ``gradient_steps`` as configured
    (-1: as many as steps collected). TD3/DDPG use Gaussian action noise with
    ``extra.action_noise_sigma`` (default 0.1). PPO: a rollout of ``n_steps = n_groups *
    min(checkpoint_every, rounds)`` steps, minibatch the largest divisor of n_steps <= batch_size.

    :param agents: the agents section of the config.
    :param n_groups: steps per episode.
    :param rounds: search rounds.
    :param checkpoint_every: rounds between checkpoints (PPO rollouts align with them).
    :param seed: the learner's seed.
    """
    extra = dict(agents.extra)
    common: dict[str, Any] = dict(
        learning_rate=agents.learning_rate,
        gamma=agents.gamma,
        policy_kwargs=dict(net_arch=list(agents.net_arch)),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    if agents.algo == "ppo":
        n_steps = n_groups * max(1, min(checkpoint_every, rounds))
        common.update(n_steps=n_steps, batch_size=_largest_divisor_at_most(n_steps, agents.batch_size))
    else:
        common.update(
            buffer_size=agents.buffer_size,
            batch_size=agents.batch_size,
            learning_starts=agents.warmup_episodes * n_groups,
            train_freq=(1, "episode"),
            gradient_steps=agents.gradient_steps,
        )
        if agents.algo in ("td3", "ddpg"):
            sigma = float(extra.pop("action_noise_sigma", 0.1))
            common["action_noise"] = NormalActionNoise(mean=np.zeros(1), sigma=sigma * np.ones(1))
    extra.pop("action_noise_sigma", None)
    common.update(extra)
    return common


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

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None and bool(np.asarray(dones).reshape(-1)[0]):
            self.agent.record_round(self.logger)
        # on-policy rollouts may be longer than the rounds left: stop exactly at the end
        return not (self.agent.on_policy and self.agent.env.round >= self.agent.rounds)


# --------------------------------------------------------------------------------- agent
class AgentCore:
    """One role's learner (the body of the :data:`PruningAgent` actor; usable without Ray).

    :param role: ``"generator"`` or ``"discriminator"``.
    :param cfg: the run config as plain data.
    :param run_dir: the run directory (checkpoints, TensorBoard).
    :param link: the Coordinator (:class:`RayCoordinatorLink` or a local double).
    :param peer_len: length of the peer ratio vector (default: max group count of both roles).
    """

    def __init__(self, role: str, cfg: dict[str, Any], run_dir: str, link: CoordinatorLink,
                 peer_len: int | None = None) -> None:
        import torch

        from collabprune.runs import RunDir, run_digest

        torch.set_num_threads(1)
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        self.role = role
        self.cfg = RunConfig.model_validate(cfg)
        self.rundir = RunDir(Path(run_dir), run_digest(self.cfg), load_log=False)
        self.link = link
        self.rounds = self.cfg.search.rounds
        self.space = RoleSpace.from_config(role, self.cfg)
        if peer_len is None:
            other = RoleSpace.from_config(ROLES[1] if role == ROLES[0] else ROLES[0], self.cfg)
            peer_len = peer_length([self.space, other])
        self.env = ChannelPruningEnv(self.space, peer_len, submit=self._submit)
        self.on_policy = self.cfg.agents.algo == "ppo"
        self.history: list[dict[str, Any]] = []
        self.times = {"agent_s": 0.0, "wait_s": 0.0}
        self._last_reply = time.time()
        self._last_saved = -1
        self.model = self._build_or_load()

    # ----------------------------------------------------------------------- model setup
    def _seed(self, rounds_done: int) -> int:
        return self.cfg.search.seed * 2 + ROLES.index(self.role) + 7919 * rounds_done

    def _vec_env(self) -> DummyVecEnv:
        env = self.env
        return DummyVecEnv([lambda: Monitor(env)])

    def _build_or_load(self) -> BaseAlgorithm:
        algo = ALGORITHMS[self.cfg.agents.algo]
        n = self.space.n_groups
        latest = self.rundir.latest_checkpoint(self.role)
        if latest is None:
            start = 0
            kwargs = algo_kwargs(self.cfg.agents, n, self.rounds, self.cfg.search.checkpoint_every, self._seed(0))
            model = algo("MlpPolicy", self._vec_env(), **kwargs)
        else:
            start, folder = latest
            model = algo.load(folder / MODEL_FILE, env=self._vec_env(), device="cpu")
            if not self.on_policy and (folder / BUFFER_FILE).is_file():
                model.load_replay_buffer(folder / BUFFER_FILE)
            if model.num_timesteps != start * n:
                raise RuntimeError(f"{folder}: {model.num_timesteps} steps saved, expected {start * n}")
            model.set_random_seed(self._seed(start))
            self._last_saved = start
        self.start_round = start
        self.env.round = start
        self.env.peer = PeerInfo.from_dict(self.link.peer_info(self.role, start - 1))
        self.env.set_replay({k: v for k, v in self.link.logged_ratios(self.role).items() if k >= start})
        if isinstance(model, ExecutedActionMixin):
            model.action_hook = self.env.executed_action
        model.set_logger(configure(str(self.rundir.tb_dir(self.role)), ["tensorboard"]))
        return model

    # ---------------------------------------------------------------------- env callback
    def _submit(self, round_index: int, ratios: list[float], macs_fraction: float) -> tuple[float, PeerInfo]:
        t0 = time.time()
        agent_s = t0 - self._last_reply
        peer_before = self.env.peer
        reply = self.link.submit(self.role, round_index, ratios, macs_fraction, agent_s)
        self._last_reply = time.time()
        self.times["agent_s"] += agent_s
        self.times["wait_s"] += self._last_reply - t0
        peer = PeerInfo.from_dict(reply["peer"])
        self.history.append({
            "round": round_index,
            "ratios": list(ratios),
            "macs_fraction": macs_fraction,
            "reward": reply["reward"],
            "replayed": self.env.replaying,
            "peer_seen": peer_before.to_dict(),
            "peer_block": peer_before.to_vector(self.env.peer_len).tolist(),
        })
        return float(reply["reward"]), peer

    def record_round(self, logger: Logger) -> None:
        """Write the finished round's numbers to TensorBoard (called by the SB3 callback)."""
        last = self.env.last_result
        if not last:
            return
        peer = last["peer"]
        logger.record("search/round", last["round"])
        logger.record("search/reward", last["reward"])
        logger.record("search/macs_fraction", last["macs_fraction"])
        logger.record("search/peer_macs_fraction", peer["macs_fraction"])
        for name, value in zip(("fid", "kde", "bal"), peer["reward_terms"]):
            logger.record(f"search/{name}_vs_uniform", value)
        logger.record("search/rho_ratio", peer["rho_ratio"])

    # --------------------------------------------------------------------- checkpoints
    def maybe_checkpoint(self) -> None:
        """Checkpoint when ``checkpoint_every`` rounds passed since the last one (between rounds)."""
        done = self.env.round
        if done > 0 and done - max(self._last_saved, 0) >= self.cfg.search.checkpoint_every:
            self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        """Save policy (+ replay buffer) for the rounds done so far (atomic; see RunDir)."""
        done = self.env.round

        def write(folder: Path) -> None:
            self.model.save(folder / MODEL_FILE)
            if not self.on_policy:
                self.model.save_replay_buffer(folder / BUFFER_FILE)
            (folder / STATE_FILE).write_text(json.dumps({
                "role": self.role, "rounds_done": done, "num_timesteps": int(self.model.num_timesteps),
                "algo": self.cfg.agents.algo,
            }))

        path = self.rundir.commit_checkpoint(self.role, done, write)
        self._last_saved = done
        return path

    # ------------------------------------------------------------------------------ run
    def run_rounds(self) -> dict[str, Any]:
        """Play and learn until ``search.rounds`` rounds are done; checkpoint at the end.

        :returns: ``{"role", "start_round", "rounds", "history", "times"}``; ``history`` has one
            entry per round played by this process (ratios, MACs fraction, reward, whether it was a
            replay, and the peer block seen during the round).
        """
        remaining = self.rounds - self.env.round
        if remaining > 0:
            self._last_reply = time.time()
            self.model.learn(
                total_timesteps=remaining * self.space.n_groups,
                callback=SearchCallback(self),
                log_interval=1,
                reset_num_timesteps=False,
            )
        if self.env.round != self._last_saved:
            self.save_checkpoint()
        return {
            "role": self.role,
            "start_round": self.start_round,
            "rounds": self.env.round,
            "history": self.history,
            "times": dict(self.times),
        }


class PruningAgentActor(AgentCore):
    """Ray actor body: builds its :class:`RayCoordinatorLink` from a Coordinator handle."""

    def __init__(self, role: str, cfg: dict[str, Any], run_dir: str, coordinator: Any,
                 peer_len: int | None = None) -> None:
        timeout = 2 * float(cfg["search"]["round_timeout_s"]) + 120
        super().__init__(role, cfg, run_dir, RayCoordinatorLink(coordinator, timeout), peer_len)

    def run(self) -> dict[str, Any]:
        """Ray entry point: :meth:`AgentCore.run_rounds`."""
        return self.run_rounds()


#: The Ray actor class (``num_cpus=AGENT_NUM_CPUS``; one torch thread).
PruningAgent = ray.remote(num_cpus=AGENT_NUM_CPUS)(PruningAgentActor)
