"""Gymnasium environment of the collaborative search: one :class:`ChannelPruningEnv` per role."""

from envs.channel_env import N_GROUP_FEATURES, N_PEER_SCALARS, ChannelPruningEnv, PeerInfo, SubmitFn, budget_use_reward
from envs.space import ROLES, RoleSpace, peer_length, role_model_and_input

__all__ = [
    "N_GROUP_FEATURES",
    "N_PEER_SCALARS",
    "ROLES",
    "ChannelPruningEnv",
    "PeerInfo",
    "RoleSpace",
    "SubmitFn",
    "budget_use_reward",
    "peer_length",
    "role_model_and_input",
]
