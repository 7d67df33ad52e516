"""``ChannelPruningEnv``: one role's channel-pruning episode (DESIGN.md §5).

One episode = one candidate of one search round = one pass over the role's prunable groups in network
order (or over its mirrored levels, an encoder group and its decoder group decided together, with
``search.tie_levels``). At step ``t`` the action (Box(-1, 1, (1,))) is a log2 multiplier on the role's uniform keep
ratio (:meth:`RoleSpace.action_to_ratio`): the zero action asks for the uniform ratio. After the last
group the requested ratios are projected onto the budget (MACs, or a latency budget's predicted
latency; :meth:`RoleSpace.project`); the
projected (executed) ratios are the proposal. Rewards are 0 before the last step; the last step's
reward is the evaluated pair's reward for this role (AMC style; the learner credits it to every step of
the episode): the team reward, for the D agent :func:`collabprune.evaluation.discriminator_reward`.

Who delivers the reward: standalone (env checkers, tests) the env calls ``submit(round, ratios,
budget_fraction) -> (reward, PeerInfo)`` itself; in a search ``submit`` is ``None`` and the
:class:`~agents.vec_env.RoundVecEnv` collects the proposals of all its envs at the last step, hands
them to the Coordinator in one call and writes the rewards back (:meth:`finish`).

Observation (float32, every entry in [-1, 1]), ``N_GROUP_FEATURES + peer_len + N_PEER_SCALARS``::

     0  t / n                         group index, normalised
     1  kind                          1 for a ConvTranspose2d group, 0 for Conv2d
     2  in_channels / max             root layer input channels (max over the role's groups)
     3  channels / max                the group's channels
     4  kernel / max                  root kernel size
     5  stride / max                  root stride
     6  log2(1+H*W) / log2(1+max)     the root's output feature map size
     7  macs_share                    share of the teacher's MACs attributed to the group
     8  mean action so far            of groups 0..t-1 (0 at t = 0)
     9  previous action               the action at t-1 (0 at t = 0)
    10  cost vs budget so far         decided groups as requested, the rest uniform: fraction / budget - 1
    11  MACs share still to decide    sum of macs_share of groups t..n-1
    12  budget                        the role's budget fraction
    13  uniform ratio                 the role's uniform keep ratio u
    14.. peer block                   :meth:`PeerInfo.to_vector`

The terminal observation has zero group features (index entry 1) and the new peer block.

On resume an agent replays rounds that are already in the evaluation log: :meth:`set_replay` gives
the logged (executed) ratios per round; during such a round the env executes them whatever the
actions, and :meth:`executed_actions` tells the learner which actions those were.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.space import RoleSpace, peer_length

N_GROUP_FEATURES = 14
#: the static features of the group being decided (the first 8 of N_GROUP_FEATURES); the other 6 are dynamic
N_STATIC = 8
N_PEER_SCALARS = 6
REWARD_TERMS: tuple[str, str, str] = ("fid", "kde", "bal")


@dataclass(frozen=True)
class PeerInfo:
    """What one agent knows of the other when it proposes (the peer block of its observation).

    All-zero defaults mean "nothing known" (round 0, or ``agents.exchange: false``).

    :param actions: the peer's proposal as actions (log2 multipliers on its uniform ratio / k, in
        [-1, 1]), network order, any length <= peer_len.
    :param macs_fraction: the peer's cost as a fraction of its teacher's in its budget's unit (physical
        MACs, or predicted latency under a latency budget), compared with ``budget``.
    :param budget: the peer's budget fraction (0 = unknown).
    :param reward_terms: the last evaluated round's (fid, kde, bal) terms, each ``x_s / x_u``
        (1 = as good as uniform; 0 = unknown).
    :param rho_ratio: rho_s / rho_t of the last evaluated pair (0 = unknown).
    :param same_round: 1 when ``actions`` are the peer's proposal for the round being proposed
        (the discriminator sees the generator's), 0 when they are its previous round's.
    """

    actions: tuple[float, ...] = ()
    macs_fraction: float = 0.0
    budget: float = 0.0
    reward_terms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rho_ratio: float = 0.0
    same_round: float = 0.0

    def to_vector(self, peer_len: int) -> np.ndarray:
        """The peer block, shape (peer_len + 6,), float32, entries in [-1, 1]: the actions
        (zero-padded), MACs fraction / budget - 1, the three terms squashed ``x / (1 + x)``,
        ``tanh(log(rho_ratio))`` and ``same_round``.

        :param peer_len: fixed length of the action part.
        :raises ValueError: more actions than ``peer_len``.
        """
        if len(self.actions) > peer_len:
            raise ValueError(f"peer has {len(self.actions)} ratios, the block holds {peer_len}")
        out = np.zeros(peer_len + N_PEER_SCALARS, dtype=np.float32)
        out[: len(self.actions)] = self.actions
        out[peer_len] = self.macs_fraction / self.budget - 1.0 if self.budget > 0 else 0.0
        for i, term in enumerate(self.reward_terms[:3]):
            out[peer_len + 1 + i] = _squash(term)
        out[peer_len + 4] = math.tanh(math.log(self.rho_ratio)) if self.rho_ratio > 0 else 0.0
        out[peer_len + 5] = self.same_round
        return _unit_box(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        d = asdict(self)
        d["actions"] = list(self.actions)
        d["reward_terms"] = list(self.reward_terms)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PeerInfo":
        """Inverse of :meth:`to_dict`."""
        terms = [float(t) for t in data.get("reward_terms", ())][:3]
        terms += [0.0] * (3 - len(terms))
        return cls(
            actions=tuple(float(r) for r in data.get("actions", ())),
            macs_fraction=float(data.get("macs_fraction", 0.0)),
            budget=float(data.get("budget", 0.0)),
            reward_terms=(terms[0], terms[1], terms[2]),
            rho_ratio=float(data.get("rho_ratio", 0.0)),
            same_round=float(data.get("same_round", 0.0)),
        )


def _unit_box(x: np.ndarray) -> np.ndarray:
    """NaN -> 0, everything else clipped to [-1, 1] (in place; +-inf -> +-1)."""
    x[np.isnan(x)] = 0.0
    return np.clip(x, -1.0, 1.0, out=x)


def _squash(x: float) -> float:
    """Non-negative, possibly huge/inf/nan ratio -> [0, 1): x / (1 + x); nan -> 0."""
    if not math.isfinite(x):
        return 1.0 if x == math.inf else 0.0
    x = max(0.0, x)
    return x / (1.0 + x)


#: ``submit(round, ratios, budget_fraction) -> (this role's reward, peer info for the next round)``; the budget
#: fraction is the candidate's cost over the teacher's in the budget's unit (MACs, or predicted latency).
SubmitFn = Callable[[int, list[float], float], "tuple[float, PeerInfo]"]


def budget_use_reward(space: RoleSpace) -> SubmitFn:
    """A cheap standalone ``submit``: reward = budget fraction / budget (1 = the budget is used fully).

    For the env checkers and tests only; a search uses the Coordinator's rewards.
    """

    def submit(round_index: int, ratios: list[float], budget_fraction: float) -> tuple[float, PeerInfo]:
        return budget_fraction / space.budget, PeerInfo()

    return submit


class ChannelPruningEnv(gym.Env):
    """Per-role channel pruning environment (Gymnasium API).

    :param space: the role's groups, MACs table, budget and action map (:meth:`RoleSpace.from_config`).
    :param peer_len: length of the peer action vector (max group count of both roles).
    :param submit: called once at the last step (standalone use), see the module docstring;
        ``None`` when a :class:`~agents.vec_env.RoundVecEnv` delivers the reward; default
        :func:`budget_use_reward`.
    :param start_round: index of the first round this env plays (non-zero on resume).
    :param peer: the peer block of the first episode.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        space: RoleSpace,
        peer_len: int | None = None,
        submit: SubmitFn | None | str = "standalone",
        start_round: int = 0,
        peer: PeerInfo | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        self.role = space.name
        self.n = space.n_decisions
        self.peer_len = int(peer_len if peer_len is not None else self.n)
        if self.peer_len < 1:
            raise ValueError("peer_len must be >= 1")
        self.submit: SubmitFn | None = budget_use_reward(space) if submit == "standalone" else submit  # type: ignore[assignment]
        self.round = int(start_round)
        self.peer = peer if peer is not None else PeerInfo()
        self._replay: dict[int, list[float]] = {}
        self._replay_requested: dict[int, list[float]] = {}
        self._static = self._static_features()
        # MACs share of the decisions not yet taken, before step t (the observation's 4th dynamic entry)
        self._share_left = [float(sum(self.space.groups[i].macs_share for d in self.space.decisions[t:] for i in d))
                            for t in range(self.space.n_decisions + 1)]
        self._peer_block: tuple[PeerInfo | None, np.ndarray] = (None, np.zeros(0, dtype=np.float32))
        self.observation_space = spaces.Box(
            low=-1.0, high=1.0, shape=(N_GROUP_FEATURES + self.peer_len + N_PEER_SCALARS,), dtype=np.float32
        )
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
        self._actions: list[float] = []
        self._requested: list[float] = []
        self.executed: list[float] = []
        self.last_result: dict[str, Any] = {}

    @classmethod
    def from_config(
        cls, role: str, cfg: Any, submit: SubmitFn | None | str = "standalone", peer_len: int | None = None
    ) -> "ChannelPruningEnv":
        """Build the env of a role from a run config (traces the unpruned networks).

        :param role: ``"generator"`` or ``"discriminator"``.
        :param cfg: the run config.
        :param submit: see the class docstring.
        :param peer_len: peer vector length; default the max group count of both roles.
        :raises BudgetError: the role's budget cannot be met with every group at ``r_min``.
        """
        space = RoleSpace.from_config(role, cfg)
        if peer_len is None:
            peer_len = peer_length([space, RoleSpace.from_config(space.role.peer, cfg)])
        return cls(space, peer_len, submit=submit)

    # -------------------------------------------------------------------------- observation
    def _static_features(self) -> np.ndarray:
        """Per-group features that do not depend on the episode: (n, 8) float32 in [0, 1]."""
        g = [self.space.groups[d[0]] for d in self.space.decisions]  # a decision's first group

        def norm(values: Sequence[float]) -> np.ndarray:
            arr = np.asarray(values, dtype=np.float64)
            top = arr.max() if arr.size and arr.max() > 0 else 1.0
            return arr / top

        hw = [math.log2(1 + x.feature_hw[0] * x.feature_hw[1]) for x in g]
        cols = [
            np.arange(self.n) / self.n,
            [1.0 if x.kind == "deconv" else 0.0 for x in g],
            norm([x.in_channels for x in g]),
            norm([x.channels for x in g]),
            norm([x.kernel for x in g]),
            norm([x.stride for x in g]),
            norm(hw),
            [sum(self.space.groups[i].macs_share for i in d) for d in self.space.decisions],
        ]
        return np.clip(np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1), 0.0, 1.0).astype(np.float32)

    def _obs(self) -> np.ndarray:
        t = len(self._requested)
        s = self.space
        if self._peer_block[0] is not self.peer:  # the peer block is fixed for the episode: build it once
            self._peer_block = (self.peer, self.peer.to_vector(self.peer_len))
        obs = np.zeros(N_GROUP_FEATURES + self.peer_len + N_PEER_SCALARS, dtype=np.float32)
        if t < self.n:
            obs[:N_STATIC] = self._static[t]
        else:
            obs[0] = 1.0
        fraction = s.budget_fraction(self.executed) if t >= self.n and self.executed else s.partial_fraction(self._requested)
        obs[N_STATIC:N_GROUP_FEATURES] = (
            float(np.mean(self._actions)) if self._actions else 0.0,
            self._actions[-1] if self._actions else 0.0,
            fraction / s.budget - 1.0,
            self._share_left[t],
            s.budget,
            s.uniform,
        )
        obs[N_GROUP_FEATURES:] = self._peer_block[1]
        return _unit_box(obs)

    # ----------------------------------------------------------------------------- replay
    def set_replay(self, logged: Mapping[int, Sequence[float]],
                   requested: Mapping[int, Sequence[float] | None] | None = None) -> None:
        """Rounds to replay from the evaluation log.

        :param logged: ``{round: this role's logged (executed) ratios}``: what the env executes.
        :param requested: ``{round: the actions the policy took}`` (logged with the proposal): the
            observations of a replayed round are built from them, as in the original round.
        """
        for rnd, ratios in logged.items():
            if len(ratios) != self.space.n_groups:
                raise ValueError(f"logged round {rnd} has {len(ratios)} {self.role} ratios, "
                                 f"expected {self.space.n_groups}")
        self._replay = {int(k): [float(r) for r in v] for k, v in logged.items()}
        self._replay_requested = {int(k): [float(r) for r in v] for k, v in (requested or {}).items()
                                  if v is not None and len(v) == self.n}

    @property
    def replaying(self) -> bool:
        """Whether the current round is replayed from the log."""
        return self.round in self._replay

    def executed_actions(self) -> list[float]:
        """The actions of the finished episode as executed: each projected (or logged) ratio mapped
        back to [-1, 1] (:meth:`RoleSpace.ratio_to_action`), averaged over a decision's tied groups.
        Learners store these.

        :raises RuntimeError: the episode is not finished.
        """
        if len(self.executed) != self.space.n_groups:
            raise RuntimeError("executed_actions: the episode is not finished")
        per_group = [self.space.ratio_to_action(r) for r in self.executed]
        return [float(np.mean([per_group[i] for i in d])) for d in self.space.decisions]

    # -------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the next round: no group decided yet; the peer block is :attr:`peer`.

        :param seed: seeds ``self.np_random`` (the env itself draws no random numbers).
        :param options: ``{"peer": PeerInfo}`` sets the peer block of this episode.
        :returns: (observation, info with ``round`` and ``replay``).
        """
        super().reset(seed=seed)
        if options and isinstance(options.get("peer"), PeerInfo):
            self.peer = options["peer"]
        self._actions, self._requested, self.executed = [], [], []
        return self._obs(), {"round": self.round, "replay": self.replaying}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Request the current group's keep ratio; after the last group, project and submit.

        :param action: shape (1,), in [-1, 1] (clipped).
        :returns: (obs, reward, terminated, truncated, info). The reward is 0 except at the last
            step of a standalone env; the last step's info has ``round``, ``ratios`` (executed),
            ``requested`` (ratios), ``actions`` (as taken), ``macs_fraction``, ``replay`` and,
            standalone, ``reward``.
        :raises RuntimeError: step after the episode ended (call reset).
        """
        t = len(self._requested)
        if t >= self.n:
            raise RuntimeError("episode is over: call reset()")
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        logged = self._replay_requested.get(self.round) if self.replaying else None
        if logged is not None:  # a replayed round observes what the original round observed
            a = logged[t]
        self._actions.append(a)
        self._requested.append(self.space.action_to_ratio(a))
        if t + 1 < self.n:
            return self._obs(), 0.0, False, False, {}
        replay = self.replaying
        self.executed = list(self._replay[self.round]) if replay else self.space.project(self.space.expand(self._requested))
        frac = self.space.macs_fraction(self.executed)
        info: dict[str, Any] = {"round": self.round, "ratios": list(self.executed),
                                "requested": self.space.expand(self._requested),
                                "actions": list(self._actions), "macs_fraction": frac, "replay": replay}
        reward = 0.0
        if self.submit is not None:
            reward, peer = self.submit(self.round, list(self.executed), self.space.budget_fraction(self.executed))
            info["reward"] = float(reward)
            self.finish(float(reward), peer)
        else:
            self.last_result = dict(info)
        return self._obs(), float(reward), True, False, info

    def finish(self, reward: float, peer: PeerInfo) -> None:
        """Close the round: record this role's reward and the peer block of the next round.

        Called by the env itself (standalone) or by the vectorised env that delivered the reward.
        """
        self.last_result = {"round": self.round, "ratios": list(self.executed),
                            "requested": self.space.expand(self._requested) if self._requested else [],
                            "macs_fraction": self.space.macs_fraction(self.executed) if self.executed else 0.0,
                            "reward": float(reward), "peer": peer.to_dict(), "replay": self.replaying}
        self.peer = peer
        self.round += 1
