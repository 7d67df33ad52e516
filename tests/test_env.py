"""ChannelPruningEnv: env checkers, the AMC budget invariant, replay, the peer block."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch

from collabprune.config import RunConfig
from collabprune.errors import BudgetError
from envs.channel_env import N_GROUP_FEATURES, N_PEER_SCALARS, ChannelPruningEnv, PeerInfo
from envs.space import RoleSpace, peer_length, role_model_and_input

SIZES = {"unet_128": 128, "resnet_6blocks": 64}


def tiny_cfg(net_g: str = "unet_128", **pruning: object) -> RunConfig:
    size = SIZES[net_g]
    return RunConfig.model_validate({
        "model": {"net_g": net_g, "ngf": 16, "ndf": 16},
        "data": {"crop_size": size, "load_size": size},
        "pruning": {"budget": {"generator": 0.35, "discriminator": 0.5}, **pruning},
    })


@lru_cache(maxsize=None)
def space(role: str, net_g: str = "unet_128") -> RoleSpace:
    return RoleSpace.from_config(role, tiny_cfg(net_g))


def make_env(role: str, net_g: str = "unet_128") -> ChannelPruningEnv:
    spaces = [space("generator", net_g), space("discriminator", net_g)]
    return ChannelPruningEnv(space(role, net_g), peer_length(spaces))


@pytest.mark.parametrize("role", ["generator", "discriminator"])
def test_env_passes_gymnasium_and_sb3_checkers(role: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = make_env(role)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check(env, skip_render_check=True)
        sb3_check(env, warn=True)
    relevant = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not relevant, relevant
    assert env.observation_space.shape == (N_GROUP_FEATURES + env.peer_len + N_PEER_SCALARS,)


def _episode(env: ChannelPruningEnv, policy, rng: np.random.Generator) -> tuple[dict, list[float]]:
    obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
    rewards, terminated, info = [], False, {}
    while not terminated:
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, info = env.step(policy(rng))
        assert not truncated
        rewards.append(reward)
    return info, rewards


POLICIES = {
    "uniform": lambda rng: rng.uniform(-1, 1, size=(1,)).astype(np.float32),
    "greedy": lambda rng: np.ones(1, dtype=np.float32),
    "spiky": lambda rng: np.array([rng.choice([-1.0, 1.0])], dtype=np.float32),
}


@pytest.mark.parametrize(
    "net_g, role",
    [("unet_128", "generator"), ("resnet_6blocks", "generator"), ("unet_128", "discriminator")],
    ids=["unet", "resnet", "patchgan"],
)
def test_budget_is_never_exceeded(net_g: str, role: str) -> None:
    env = make_env(role, net_g)
    s = env.space
    rng = np.random.default_rng(0)
    for name, policy in POLICIES.items():
        for _ in range(40 if name == "uniform" else 5):
            info, rewards = _episode(env, policy, rng)
            assert all(r == 0.0 for r in rewards[:-1]), "reward is sparse: only the last step"
            ratios = info["ratios"]
            assert len(ratios) == s.n_groups
            assert all(s.r_min <= r <= s.r_max for r in ratios)
            assert info["macs_fraction"] <= s.budget + 1e-12
            assert s.macs_fraction(ratios) == info["macs_fraction"]
    # the greedy policy is clipped by the budget, not by r_max: it uses most of the budget
    info, _ = _episode(env, POLICIES["greedy"], rng)
    assert info["macs_fraction"] > 0.8 * s.budget


def test_budget_holds_on_the_physically_pruned_network() -> None:
    """The fast estimate equals the MACs of the real pruned network, which meets the budget."""
    from collabprune.metrics.macs import macs
    from collabprune.pruning.prune import prune_model

    cfg = tiny_cfg("unet_128")
    env = make_env("generator")
    info, _ = _episode(env, POLICIES["uniform"], np.random.default_rng(3))
    model, shape = role_model_and_input("generator", cfg)
    pruned, _spec = prune_model(model, torch.zeros(shape), info["ratios"], cfg.pruning)
    assert macs(pruned, shape) / macs(model, shape) == pytest.approx(info["macs_fraction"], rel=1e-9)
    assert info["macs_fraction"] <= cfg.pruning.budget.generator


def test_rounding_is_accounted_for() -> None:
    """A budget right above the r_min floor: rounding to round_to must not push MACs over it."""
    base = space("generator")
    floor = base.lower_bound([])
    tight = RoleSpace(role="generator", channels=base.channels, budget=floor + 0.01)
    env = ChannelPruningEnv(tight, peer_len=base.n_groups)
    rng = np.random.default_rng(1)
    for _ in range(20):
        info, _ = _episode(env, POLICIES["spiky"], rng)
        assert info["macs_fraction"] <= tight.budget + 1e-12


def test_infeasible_budget_raises_budget_error() -> None:
    cfg = tiny_cfg("unet_128")
    cfg.pruning.budget.generator = 0.01
    with pytest.raises(BudgetError, match="infeasible"):
        ChannelPruningEnv.from_config("generator", cfg)


def test_replay_executes_logged_ratios_and_reports_them() -> None:
    env = make_env("discriminator")
    s = env.space
    logged = [s.r_min + 0.1 * (i + 1) for i in range(s.n_groups)]
    assert s.fits(logged)
    env.set_replay({0: logged})
    env.reset(seed=0)
    assert env.replaying
    for i in range(s.n_groups):
        executed = env.executed_action(np.array([0.9], dtype=np.float32))
        assert s.action_to_ratio(float(executed[0])) == pytest.approx(logged[i])
        _, _, terminated, _, info = env.step(np.array([0.9], dtype=np.float32))
    assert terminated and info["ratios"] == pytest.approx(logged) and info["replay"]
    env.reset()
    assert not env.replaying  # round 1 is live again


def test_executed_action_is_the_budget_corrected_action() -> None:
    env = make_env("generator")
    env.reset(seed=0)
    for _ in range(env.n):
        wanted = np.ones(1, dtype=np.float32)
        executed = env.executed_action(wanted)
        assert executed.shape == wanted.shape and executed[0] <= 1.0
        before = len(env._ratios)
        env.step(executed)
        ratio = env._ratios[before]
        assert ratio == pytest.approx(env.space.action_to_ratio(float(executed[0])), abs=1e-6)


def test_peer_block_layout() -> None:
    env = make_env("generator")
    peer = PeerInfo(ratios=(0.5, 0.25), macs_fraction=0.4, reward_terms=(1.0, 3.0, float("nan")), rho_ratio=1.0)
    env.peer = peer
    obs, _ = env.reset(seed=0)
    block = obs[N_GROUP_FEATURES:]
    assert block.shape == (env.peer_len + N_PEER_SCALARS,)
    assert block[:2] == pytest.approx([0.5, 0.25]) and not block[2 : env.peer_len].any()
    assert block[env.peer_len] == pytest.approx(0.4)
    assert block[env.peer_len + 1 : env.peer_len + 4] == pytest.approx([0.5, 0.75, 0.0])
    assert block[env.peer_len + 4] == pytest.approx(0.0)  # log(rho ratio 1) = 0
    assert not PeerInfo().to_vector(env.peer_len).any()
    assert PeerInfo.from_dict(peer.to_dict()).ratios == peer.ratios
    with pytest.raises(ValueError):
        PeerInfo(ratios=(0.5,) * (env.peer_len + 1)).to_vector(env.peer_len)


def test_submit_callback_gets_round_ratios_and_fraction() -> None:
    calls = []

    def submit(rnd: int, ratios: list[float], frac: float) -> tuple[float, PeerInfo]:
        calls.append((rnd, ratios, frac))
        return -1.5, PeerInfo(ratios=(0.3,) * 4, macs_fraction=0.3)

    env = ChannelPruningEnv(space("discriminator"), peer_len=13, submit=submit)
    for rnd in range(2):
        env.reset()
        done = False
        while not done:
            _, reward, done, _, _ = env.step(np.zeros(1, dtype=np.float32))
        assert reward == -1.5
    assert [c[0] for c in calls] == [0, 1]
    obs, _ = env.reset()
    assert obs[N_GROUP_FEATURES : N_GROUP_FEATURES + 4] == pytest.approx([0.3] * 4)
