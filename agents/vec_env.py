"""``RoundVecEnv``: the N envs of one role that propose together and are rewarded together.

A search round is N paired episodes (N = candidates per round, DESIGN.md §5). The agent's SB3 learner
steps its N :class:`~envs.channel_env.ChannelPruningEnv` in lockstep; after the last group every env
holds a projected proposal. This VecEnv then hands the N proposals to the Coordinator in ONE call
(:meth:`RoundLink.submit`), which evaluates the N pairs concurrently and answers with N team
rewards; it writes them back (:meth:`ChannelPruningEnv.finish`), asks for the next round's peer
blocks (:meth:`RoundLink.peers`: the generator's come at once, the discriminator's wait for the
generator's proposals of that round) and resets the envs, as SB3's auto-reset expects.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.channel_env import ChannelPruningEnv, PeerInfo


class RoundLink(Protocol):
    """What a role's VecEnv needs from the Coordinator."""

    def submit(self, round_index: int, proposals: list[dict[str, Any]]) -> list[tuple[float, PeerInfo]]:
        """Hand in the N proposals of a round (``{"ratios", "requested", "actions", "macs_fraction"}`` each);
        return each slot's (reward, peer block for the next round): the team reward, for the D agent
        :func:`collabprune.evaluation.discriminator_reward` of it."""
        ...

    def peers(self, round_index: int) -> list[PeerInfo]:
        """The peer block of each slot for proposing in ``round_index`` (may wait for the peer)."""
        ...


class RoundVecEnv(DummyVecEnv):
    """N envs of one role, stepped together, submitted together (see the module docstring).

    :param envs: the role's envs, one per slot (same channel space, same round; a multi-budget
        search's generator envs each at their slot's budget).
    :param link: the Coordinator connection.
    :param rounds: the search's total rounds: after the last one no peer block is requested.
    """

    def __init__(self, envs: Sequence[ChannelPruningEnv], link: RoundLink, rounds: int) -> None:
        self.pruning_envs = list(envs)
        super().__init__([(lambda e=e: e) for e in self.pruning_envs])
        self.link = link
        self.rounds = int(rounds)
        self.last_executed: np.ndarray | None = None

    @property
    def round(self) -> int:
        """The round the envs propose next."""
        return self.pruning_envs[0].round

    def _peers(self) -> list[PeerInfo]:
        if self.round >= self.rounds:
            return [PeerInfo() for _ in self.pruning_envs]
        peers = self.link.peers(self.round)
        if len(peers) != len(self.pruning_envs):
            raise RuntimeError(f"round {self.round}: {len(peers)} peer blocks for {len(self.pruning_envs)} envs")
        return peers

    def reset(self) -> np.ndarray:  # type: ignore[override]
        """Start the current round on every env with its slot's peer block."""
        for i, (env, peer) in enumerate(zip(self.pruning_envs, self._peers())):
            obs, info = env.reset(options={"peer": peer})
            self._save_obs(i, obs)
            self.reset_infos[i] = info
        return self._obs_from_buf()

    def step_wait(self):  # type: ignore[no-untyped-def]
        infos: list[dict[str, Any]] = []
        terminal = []
        for i, env in enumerate(self.pruning_envs):
            obs, reward, terminated, truncated, info = env.step(self.actions[i])
            self.buf_rews[i] = reward
            self.buf_dones[i] = terminated or truncated
            infos.append(info)
            terminal.append(obs)
            self._save_obs(i, obs)
        if self.buf_dones.any():
            if not self.buf_dones.all():
                raise RuntimeError("envs of one role must end their episodes together (same groups)")
            round_index = self.round
            digest = self.pruning_envs[0].space.channels.digest
            proposals = [{"ratios": info["ratios"], "requested": info["requested"], "actions": info["actions"],
                          "macs_fraction": info["macs_fraction"], "space_digest": digest} for info in infos]
            replies = self.link.submit(round_index, proposals)
            self.last_executed = np.array([env.executed_actions() for env in self.pruning_envs], dtype=np.float32)
            for i, (env, (reward, peer)) in enumerate(zip(self.pruning_envs, replies)):
                env.finish(float(reward), peer)
                self.buf_rews[i] = float(reward)
                infos[i] = dict(infos[i], reward=float(reward), terminal_observation=terminal[i])
            self.reset()
        self.buf_infos = infos
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)
