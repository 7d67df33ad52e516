"""``ChannelPruningEnv``: one role's channel-pruning episode (DESIGN.md §5).

One episode = one search round = one pass over the role's prunable groups in network order. At
step ``t`` the agent's action (Box(-1, 1, (1,))) is rescaled to a keep ratio in [r_min, r_max] and
corrected with the AMC budget rule (:meth:`RoleSpace.max_feasible_ratio`), so a finished proposal
never exceeds the role's MACs budget. At the last step the proposal is handed to ``submit``; the
reply (the team reward and the peer's :class:`PeerInfo`) ends the episode. Earlier steps get reward
0 (sparse, AMC style).

Observation (float32, every entry in [-1, 1]), ``N_GROUP_FEATURES + peer_len + 5`` entries::

     0  t / n                         group index, normalised
     1  kind                          1 for a ConvTranspose2d group, 0 for Conv2d
     2  in_channels / max             root layer input channels (max over the role's groups)
     3  channels / max                the group's channels
     4  kernel / max                  root kernel size
     5  stride / max                  root stride
     6  log2(1+H*W) / log2(1+max)     the root's output feature map size
     7  macs_share                    share of the teacher's MACs attributed to the group
     8  mean ratio so far             of groups 0..t-1 (0 at t = 0)
     9  previous ratio                the keep ratio chosen at t-1 (0 at t = 0)
    10  MACs fraction so far          lower bound: decided groups + the rest at r_min
    11  slack                         (budget - lower bound) / budget, in [0, 1]
    12  MACs share still to decide    sum of macs_share of groups t..n-1
    13  budget                        the role's budget fraction
    14  wall                          largest feasible ratio now, normalised to [0, 1] over [r_min, r_max]
    15.. peer block                   PeerInfo.to_vector(peer_len): peer ratios (zero-padded), peer MACs
                                      fraction, the round's reward terms squashed x/(1+x) (fid, kde,
                                      bal, each relative to the uniform candidate), tanh(log(rho_s/rho_t))

The terminal observation (after the last step) has zero group features (index entry 1) and the new
peer block. ``submit`` defaults to a cheap local reward so the env runs standalone (env checkers,
budget tests); in a search the :class:`~agents.pruning_agent.AgentCore` passes a callback that asks
the :class:`~agents.coordinator.Coordinator`.

On resume an agent replays rounds that are already in the evaluation log: :meth:`set_replay` gives
the logged ratios per round; during such a round the env executes the logged ratio at every step
whatever the action, and :meth:`executed_action` tells the learner which action that was (so the
replay buffer holds the true transitions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.space import RoleSpace, peer_length

if TYPE_CHECKING:
    from collabprune.config import RunConfig

N_GROUP_FEATURES = 15
N_PEER_SCALARS = 5
REWARD_TERMS: tuple[str, str, str] = ("fid", "kde", "bal")


@dataclass(frozen=True)
class PeerInfo:
    """What one agent learns about the other after a round (the peer block of its observation).

    All-zero defaults mean "nothing known" (round 0, or ``agents.exchange: false``).

    :param ratios: the peer's keep ratios of the round, network order (any length <= peer_len).
    :param macs_fraction: the peer's MACs as a fraction of its teacher's.
    :param reward_terms: the round's (fid, kde, bal), each divided by the uniform candidate's
        value (1 = as good as uniform; 0 = unknown).
    :param rho_ratio: rho_s / rho_t of the round's pair (0 = unknown).
    """

    ratios: tuple[float, ...] = ()
    macs_fraction: float = 0.0
    reward_terms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rho_ratio: float = 0.0

    def to_vector(self, peer_len: int) -> np.ndarray:
        """The peer block, shape (peer_len + 5,), float32, entries in [-1, 1].

        :param peer_len: fixed length of the ratio part (ratios are zero-padded).
        :raises ValueError: more ratios than ``peer_len``.
        """
        if len(self.ratios) > peer_len:
            raise ValueError(f"peer has {len(self.ratios)} ratios, the block holds {peer_len}")
        out = np.zeros(peer_len + N_PEER_SCALARS, dtype=np.float32)
        out[: len(self.ratios)] = self.ratios
        out[peer_len] = self.macs_fraction
        for i, term in enumerate(self.reward_terms[:3]):
            out[peer_len + 1 + i] = _squash(term)
        out[peer_len + 4] = math.tanh(math.log(self.rho_ratio)) if self.rho_ratio > 0 else 0.0
        return np.clip(np.nan_to_num(out, nan=0.0), -1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        d["reward_terms"] = list(self.reward_terms)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PeerInfo":
        """Inverse of :meth:`to_dict`."""
        terms = [float(t) for t in data.get("reward_terms", ())][:3]
        terms += [0.0] * (3 - len(terms))
        return cls(
            ratios=tuple(float(r) for r in data.get("ratios", ())),
            macs_fraction=float(data.get("macs_fraction", 0.0)),
            reward_terms=(terms[0], terms[1], terms[2]),
            rho_ratio=float(data.get("rho_ratio", 0.0)),
        )


def _squash(x: float) -> float:
    """Non-negative, possibly huge/inf/nan ratio -> [0, 1): x / (1 + x); nan -> 0."""
    if not math.isfinite(x):
        return 1.0 if x == math.inf else 0.0
    x = max(0.0, x)
    return x / (1.0 + x)


#: ``submit(round, ratios, macs_fraction) -> (team reward, peer info)``.
SubmitFn = Callable[[int, list[float], float], "tuple[float, PeerInfo]"]


def budget_use_reward(space: RoleSpace) -> SubmitFn:
    """A cheap standalone ``submit``: reward = MACs fraction / budget (1 = the budget is used fully).

    For the env checkers and tests only; a search uses the Coordinator's team reward.
    """

    def submit(round_index: int, ratios: list[float], macs_fraction: float) -> tuple[float, PeerInfo]:
        return macs_fraction / space.budget, PeerInfo()

    return submit


class ChannelPruningEnv(gym.Env):
    """Per-role channel pruning environment (Gymnasium API).

    :param space: the role's groups, MACs table and budget (:meth:`RoleSpace.from_config`).
    :param peer_len: length of the peer ratio vector (max group count of both roles).
    :param submit: called once at the last step, ``submit(round, ratios, macs_fraction)``, returns
        ``(reward, PeerInfo)``; default :func:`budget_use_reward` (standalone use).
    :param start_round: index of the first round this env plays (non-zero on resume).
    :param peer: the peer block of the first episode (from the log on resume).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        space: RoleSpace,
        peer_len: int | None = None,
        submit: SubmitFn | None = None,
        start_round: int = 0,
        peer: PeerInfo | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        self.role = space.role
        self.n = space.n_groups
        self.peer_len = int(peer_len if peer_len is not None else self.n)
        if self.peer_len < 1:
            raise ValueError("peer_len must be >= 1")
        self.submit: SubmitFn = submit if submit is not None else budget_use_reward(space)
        self.round = int(start_round)
        self.peer = peer if peer is not None else PeerInfo()
        self._replay: dict[int, list[float]] = {}
        self._static = self._static_features()
        self.observation_space = spaces.Box(
            low=-1.0, high=1.0, shape=(N_GROUP_FEATURES + self.peer_len + N_PEER_SCALARS,), dtype=np.float32
        )
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
        self._ratios: list[float] = []
        self.last_result: dict[str, Any] = {}

    @classmethod
    def from_config(
        cls, role: str, cfg: "RunConfig", submit: SubmitFn | None = None, peer_len: int | None = None
    ) -> "ChannelPruningEnv":
        """Build the env of a role from a run config (traces the unpruned networks).

        :param role: ``"generator"`` or ``"discriminator"``.
        :param cfg: the run config.
        :param submit: see the class docstring (default: standalone reward).
        :param peer_len: peer ratio vector length; default the max group count of both roles.
        :raises BudgetError: the role's budget cannot be met with every group at ``r_min``.
        """
        space = RoleSpace.from_config(role, cfg)
        if peer_len is None:
            other = "discriminator" if role == "generator" else "generator"
            peer_len = peer_length([space, RoleSpace.from_config(other, cfg)])
        return cls(space, peer_len, submit=submit)

    # -------------------------------------------------------------------------- observation
    def _static_features(self) -> np.ndarray:
        """Per-group features that do not depend on the episode: (n, 8) float32 in [0, 1]."""
        g = self.space.groups

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
            [x.macs_share for x in g],
        ]
        return np.clip(np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1), 0.0, 1.0).astype(np.float32)

    def _obs(self) -> np.ndarray:
        t = len(self._ratios)
        s = self.space
        group = np.zeros(8, dtype=np.float32)
        if t < self.n:
            group = self._static[t]
        else:
            group[0] = 1.0
        lb = s.lower_bound(self._ratios)
        span = max(s.r_max - s.r_min, 1e-12)
        wall = (s.max_feasible_ratio(self._ratios) - s.r_min) / span if t < self.n else 0.0
        rest_share = float(sum(gr.macs_share for gr in s.groups[t:]))
        dynamic = np.array(
            [
                float(np.mean(self._ratios)) if self._ratios else 0.0,
                self._ratios[-1] if self._ratios else 0.0,
                lb,
                (s.budget - lb) / s.budget,
                rest_share,
                s.budget,
                wall,
            ],
            dtype=np.float32,
        )
        obs = np.concatenate([group, dynamic, self.peer.to_vector(self.peer_len)]).astype(np.float32)
        return np.clip(obs, -1.0, 1.0)

    # ----------------------------------------------------------------------------- replay
    def set_replay(self, logged: Mapping[int, Sequence[float]]) -> None:
        """Rounds to replay from the evaluation log: ``{round: this role's logged ratios}``."""
        for rnd, ratios in logged.items():
            if len(ratios) != self.n:
                raise ValueError(f"logged round {rnd} has {len(ratios)} {self.role} ratios, expected {self.n}")
        self._replay = {int(k): [float(r) for r in v] for k, v in logged.items()}

    @property
    def replaying(self) -> bool:
        """Whether the current round is replayed from the log."""
        return self.round in self._replay

    def _ratio_for(self, action: np.ndarray) -> float:
        t = len(self._ratios)
        if self.replaying:
            return self._replay[self.round][t]
        requested = self.space.action_to_ratio(float(np.asarray(action).reshape(-1)[0]))
        return self.space.max_feasible_ratio(self._ratios, requested)

    def executed_action(self, action: np.ndarray) -> np.ndarray:
        """The action the env will actually execute for ``action`` at the current step.

        The budget-corrected ratio (or, when replaying, the logged ratio) mapped back to [-1, 1].
        Pure: no state changes. Learners store this in their replay buffer.

        :param action: shape (1,) or (n_envs, 1).
        :returns: same shape and dtype as ``action``.
        """
        arr = np.asarray(action)
        if len(self._ratios) >= self.n:
            return arr
        executed = self.space.ratio_to_action(self._ratio_for(arr))
        return np.full_like(arr, executed)

    # -------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the next round: no group decided yet; the peer block is the last reply's.

        :param seed: seeds ``self.np_random`` (the env itself draws no random numbers).
        :param options: unused.
        :returns: (observation, info with ``round``).
        """
        super().reset(seed=seed)
        self._ratios = []
        return self._obs(), {"round": self.round, "replay": self.replaying}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current group's keep ratio; submit the proposal after the last group.

        :param action: shape (1,), in [-1, 1] (clipped).
        :returns: (obs, reward, terminated, truncated, info); the reward is 0 except at the last
            step; the last step's info has ``ratios``, ``macs_fraction``, ``round``, ``reward``.
        :raises RuntimeError: step after the episode ended (call reset).
        """
        if len(self._ratios) >= self.n:
            raise RuntimeError("episode is over: call reset()")
        self._ratios.append(float(self._ratio_for(action)))
        if len(self._ratios) < self.n:
            return self._obs(), 0.0, False, False, {}
        ratios = self.space.repair(self._ratios)
        self._ratios = ratios
        frac = self.space.macs_fraction(ratios)
        rnd = self.round
        reward, peer = self.submit(rnd, list(ratios), frac)
        self.peer = peer
        self.round += 1
        info = {"round": rnd, "ratios": list(ratios), "macs_fraction": frac, "reward": float(reward),
                "replay": rnd in self._replay}
        self.last_result = dict(info, peer=peer.to_dict())
        return self._obs(), float(reward), True, False, info
