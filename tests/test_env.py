"""ChannelPruningEnv: env checkers, the action space centred on uniform, the budget projection, replay, the peer block."""

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
        # round_to 4 as in the demo config: with ngf=16 a step of 8 channels is half a 16-channel group
        "pruning": {"budget": {"generator": 0.35, "discriminator": 0.5}, "round_to": 4, "min_channels": 4, **pruning},
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
    "random": lambda rng: rng.uniform(-1, 1, size=(1,)).astype(np.float32),
    "greedy": lambda rng: np.ones(1, dtype=np.float32),
    "spiky": lambda rng: np.array([rng.choice([-1.0, 1.0])], dtype=np.float32),
}

FAMILIES = [("unet_128", "generator"), ("resnet_6blocks", "generator"), ("unet_128", "discriminator")]


@pytest.mark.parametrize("net_g, role", FAMILIES, ids=["unet", "resnet", "patchgan"])
def test_projection_meets_the_budget_exactly(net_g: str, role: str) -> None:
    """Property test over random actions: never over the budget; the generator (pix2pix U-Net and
    CycleGAN ResNet) uses at least 98% of it; the PatchGAN D, whose four coarse groups cannot always
    get that close, at least 90%."""
    env = make_env(role, net_g)
    s = env.space
    floor = 0.98 if role == "generator" else 0.90
    rng = np.random.default_rng(0)
    for name, policy in POLICIES.items():
        for _ in range(60 if name == "random" else 5):
            info, rewards = _episode(env, policy, rng)
            assert all(r == 0.0 for r in rewards[:-1]), "reward is sparse: only the last step"
            ratios = info["ratios"]
            assert len(ratios) == s.n_groups
            assert all(s.r_min - 1e-12 <= r <= s.r_max for r in ratios)
            assert info["macs_fraction"] <= s.budget + 1e-12
            assert info["macs_fraction"] >= floor * s.budget, (name, info["macs_fraction"])
            assert s.macs_fraction(ratios) == info["macs_fraction"]


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("net_g, ngf", [("unet_128", 16), ("resnet_6blocks", 32)])
def test_projection_property_over_budgets(net_g: str, ngf: int, budget: float) -> None:
    """Both families (the ResNet at ngf 32: at ngf 16 and a 10% budget its 16-channel outer groups and
    64-channel residual stream move in steps too coarse to land within 2%, it reaches 97.8%)."""
    cfg = tiny_cfg(net_g)
    cfg.model.ngf = ngf
    channels = RoleSpace.from_config("generator", cfg).channels
    rng = np.random.default_rng(int(budget * 100))
    u = channels.uniform_ratio(budget)
    for _ in range(100):
        requested = list(u * 2.0 ** (1.5 * rng.uniform(-1, 1, channels.num_groups)))
        ratios = channels.project(requested, budget)
        frac = channels.macs_fraction(ratios)
        assert 0.98 * budget <= frac <= budget + 1e-12
        assert channels.kept(ratios) == [round(r * g.channels) for r, g in zip(ratios, channels.groups)]


def test_projection_keeps_the_requested_allocation() -> None:
    """One common scale: groups asked to be twice as wide stay about twice as wide; nobody starves."""
    channels = space("generator").channels
    u = channels.uniform_ratio(0.35)
    requested = [u * (2.0 if i % 2 else 1.0) for i in range(channels.num_groups)]
    ratios = channels.project(requested, 0.35)
    odd = np.mean([r for i, r in enumerate(ratios) if i % 2])
    even = np.mean([r for i, r in enumerate(ratios) if not i % 2])
    assert 1.5 < odd / even < 2.5
    assert min(channels.kept(ratios)) > channels.cfg.min_channels


def _projection_by_definition(channels, requested: list[float], budget: float) -> list[float]:
    """DESIGN.md §5's projection written plainly: cost every bisection midpoint in full with
    kept_channels and estimate_macs, try every group's next step one by one."""
    from collabprune.pruning.costs import estimate_macs
    from collabprune.pruning.prune import kept_channels

    cfg, groups = channels.cfg, channels.groups
    limit = budget * channels.teacher_macs * (1 + 1e-12)

    def cost(kept):
        return estimate_macs(channels.table, kept)

    def kept_at(scale):
        return [kept_channels(g.channels, min(cfg.r_max, max(cfg.r_min, scale * r)), cfg) for g, r in zip(groups, requested)]

    lo, hi = 0.0, max(cfg.r_max / min(requested), 1.0)
    if cost(kept_at(hi)) <= limit:
        lo = hi
    else:
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cost(kept_at(mid)) <= limit else (lo, mid)
    target = [min(cfg.r_max, max(cfg.r_min, lo * r)) * g.channels for g, r in zip(groups, requested)]
    top = [kept_channels(g.channels, cfg.r_max, cfg) for g in groups]
    floor = [kept_channels(g.channels, cfg.r_min, cfg) for g in groups]

    def fill(kept):
        while True:
            options = []
            for i, g in enumerate(groups):
                trial = list(kept)
                trial[i] = min(top[i], kept[i] + cfg.round_to)
                if kept[i] < top[i] and cost(trial) <= limit:
                    options.append(((kept[i] - target[i]) / g.channels, cost(trial) - cost(kept), i, trial))
            if not options:
                return kept
            kept = min(options, key=lambda o: o[:3])[3]

    kept = fill(kept_at(lo))
    while cost(kept) < 0.98 * budget * channels.teacher_macs:
        moves = []
        for i in range(len(groups)):
            for j in range(i, len(groups)):
                trial = list(kept)
                trial[i] -= cfg.round_to
                if j != i:
                    trial[j] -= cfg.round_to
                if trial[i] >= floor[i] and trial[j] >= floor[j]:
                    moves.append(fill(trial))
        better = [m for m in moves if cost(m) > cost(kept)]
        if not better:
            break
        kept = max(better, key=cost)
    return [k / g.channels for k, g in zip(kept, groups)]


@pytest.mark.parametrize("net_g, role", FAMILIES, ids=["unet", "resnet", "patchgan"])
def test_projection_equals_its_plain_definition(net_g: str, role: str) -> None:
    """The projection's fast paths (bisection recosting only the groups still moving, batched costs of
    the fill's trial steps) give exactly the ratios of costing everything in full."""
    channels = space(role, net_g).channels
    rng = np.random.default_rng(5)
    for budget in (0.1, 0.35, 0.7):
        if channels.min_fraction() > budget:
            continue
        u = channels.uniform_ratio(budget)
        for _ in range(25):
            requested = list(u * 2.0 ** (2.0 * rng.uniform(-1, 1, channels.num_groups)))
            assert channels.project(requested, budget) == _projection_by_definition(channels, requested, budget)


@pytest.mark.parametrize("net_g, role", FAMILIES, ids=["unet", "resnet", "patchgan"])
def test_zero_action_is_the_uniform_candidate(net_g: str, role: str) -> None:
    env = make_env(role, net_g)
    info, _ = _episode(env, lambda rng: np.zeros(1, dtype=np.float32), np.random.default_rng(0))
    assert info["ratios"] == env.space.uniform_candidate()
    assert info["requested"] == [env.space.uniform] * env.n
    # and the uniform candidate is the largest single keep ratio, projected
    u = env.space.uniform
    assert env.space.fits([u] * env.n) and not env.space.fits([min(1.0, u * 1.01 + 1e-3)] * env.n)
    assert env.space.action_to_ratio(0.0) == pytest.approx(u)
    assert env.space.action_to_ratio(1.0) == pytest.approx(min(1.0, u * 2 ** env.space.log2_range))
    for r in (u / 2, u, min(1.0, 1.5 * u)):
        assert env.space.action_to_ratio(env.space.ratio_to_action(r)) == pytest.approx(r)


def test_budget_holds_on_the_physically_pruned_network() -> None:
    """The fast estimate equals the MACs of the real pruned network, which meets the budget."""
    from collabprune.metrics.macs import macs
    from collabprune.pruning.prune import prune_model

    cfg = tiny_cfg("unet_128")
    env = make_env("generator")
    info, _ = _episode(env, POLICIES["random"], np.random.default_rng(3))
    model, shape = role_model_and_input("generator", cfg)
    pruned, _spec = prune_model(model, torch.zeros(shape), info["ratios"], cfg.pruning)
    assert macs(pruned, shape) / macs(model, shape) == pytest.approx(info["macs_fraction"], rel=1e-9)
    assert info["macs_fraction"] <= cfg.pruning.budget.generator


def test_infeasible_budget_raises_budget_error() -> None:
    cfg = tiny_cfg("unet_128")
    cfg.pruning.budget.generator = 0.01
    with pytest.raises(BudgetError, match="infeasible"):
        ChannelPruningEnv.from_config("generator", cfg)


def test_replay_executes_logged_ratios_and_reports_them() -> None:
    env = make_env("discriminator")
    s = env.space
    logged = s.project([s.r_min + 0.1 * (i + 1) for i in range(s.n_groups)])
    env.set_replay({0: logged})
    env.reset(seed=0)
    assert env.replaying
    for _ in range(s.n_groups):
        _, _, terminated, _, info = env.step(np.array([0.9], dtype=np.float32))
    assert terminated and info["ratios"] == pytest.approx(logged) and info["replay"]
    assert env.executed_actions() == pytest.approx([s.ratio_to_action(r) for r in logged])
    env.reset()
    assert not env.replaying  # round 1 is live again


def test_executed_actions_are_the_projected_ratios() -> None:
    env = make_env("generator")
    info, _ = _episode(env, POLICIES["greedy"], np.random.default_rng(0))
    executed = env.executed_actions()
    assert [env.space.action_to_ratio(a) for a in executed] == pytest.approx(info["ratios"], rel=1e-6)
    assert info["requested"] == [env.space.action_to_ratio(1.0)] * env.n  # asked: everything wide
    assert info["ratios"] == env.space.uniform_candidate()  # a common shift projects back to uniform


def test_peer_block_layout() -> None:
    env = make_env("generator")
    peer = PeerInfo(actions=(0.5, -0.25), macs_fraction=0.4, budget=0.5, reward_terms=(1.0, 3.0, float("nan")),
                    rho_ratio=1.0, same_round=1.0)
    obs, _ = env.reset(seed=0, options={"peer": peer})
    block = obs[N_GROUP_FEATURES:]
    assert block.shape == (env.peer_len + N_PEER_SCALARS,)
    assert block[:2] == pytest.approx([0.5, -0.25]) and not block[2 : env.peer_len].any()
    assert block[env.peer_len] == pytest.approx(0.4 / 0.5 - 1)
    assert block[env.peer_len + 1 : env.peer_len + 4] == pytest.approx([0.5, 0.75, 0.0])
    assert block[env.peer_len + 4] == pytest.approx(0.0)  # log(rho ratio 1) = 0
    assert block[env.peer_len + 5] == pytest.approx(1.0)
    assert not PeerInfo().to_vector(env.peer_len).any()
    clean = PeerInfo(actions=(0.5, -0.25), macs_fraction=0.4, budget=0.5, reward_terms=(1.0, 3.0, 0.5))
    assert PeerInfo.from_dict(json_roundtrip(clean.to_dict())) == clean
    with pytest.raises(ValueError):
        PeerInfo(actions=(0.5,) * (env.peer_len + 1)).to_vector(env.peer_len)


def json_roundtrip(data: dict) -> dict:
    import json

    return json.loads(json.dumps(data))


def test_submit_callback_gets_round_ratios_and_fraction() -> None:
    calls = []

    def submit(rnd: int, ratios: list[float], frac: float) -> tuple[float, PeerInfo]:
        calls.append((rnd, ratios, frac))
        return -1.5, PeerInfo(actions=(0.3,) * 4, macs_fraction=0.3, budget=0.6)

    env = ChannelPruningEnv(space("discriminator"), peer_len=13, submit=submit)
    for rnd in range(2):
        env.reset()
        done = False
        while not done:
            _, reward, done, _, _ = env.step(np.zeros(1, dtype=np.float32))
        assert reward == -1.5
    assert [c[0] for c in calls] == [0, 1]
    assert calls[0][1] == env.space.uniform_candidate()
    obs, _ = env.reset()
    assert obs[N_GROUP_FEATURES : N_GROUP_FEATURES + 4] == pytest.approx([0.3] * 4)


def test_tied_levels_decide_mirrored_groups_together() -> None:
    """search.tie_levels: one decision per U-Net level (encoder group + decoder group of the same
    feature-map size); ResNet: its down- and up-sampling convolutions; the projection still applies."""
    for net_g, expected in (("unet_128", ((0, 12), (1, 11), (2, 10), (3, 9), (4, 8), (5, 7), (6,))),
                            ("resnet_6blocks", ((0, 10), (1, 9), (2,), (3,), (4,), (5,), (6,), (7,), (8,)))):
        cfg = tiny_cfg(net_g)
        cfg.search.tie_levels = True
        s = RoleSpace.from_config("generator", cfg)
        assert s.decisions == expected
        for a, b in (d for d in s.decisions if len(d) == 2):
            assert s.groups[a].feature_hw == s.groups[b].feature_hw and s.groups[b].kind == "deconv"
        env = ChannelPruningEnv(s, peer_len=s.n_groups)
        assert env.n == len(expected)
        info, _ = _episode(env, lambda rng: np.zeros(1, dtype=np.float32), np.random.default_rng(0))
        assert info["ratios"] == s.uniform_candidate()
        rng = np.random.default_rng(1)
        info, _ = _episode(env, POLICIES["random"], rng)
        for d, a in zip(s.decisions, info["actions"]):
            assert len({info["requested"][i] for i in d}) == 1  # tied groups ask for the same ratio
            assert info["requested"][d[0]] == pytest.approx(s.action_to_ratio(a))
        assert 0.98 * s.budget <= info["macs_fraction"] <= s.budget + 1e-12
        assert len(env.executed_actions()) == len(expected)
    # the discriminator is never tied (it has no mirrored levels)
    cfg = tiny_cfg("unet_128")
    cfg.search.tie_levels = True
    assert RoleSpace.from_config("discriminator", cfg).n_decisions == 4


def test_the_discriminator_can_have_its_own_action_range() -> None:
    """``search.d_action_log2_range`` sets the discriminator's k and leaves the generator's; unset, both
    use ``search.action_log2_range``."""
    base = tiny_cfg()
    narrow = RunConfig.model_validate({**base.to_dict(), "search": {**base.search.model_dump(), "d_action_log2_range": 0.5}})
    assert narrow.search.log2_range("d") == narrow.search.log2_range("discriminator") == 0.5
    assert narrow.search.log2_range("generator") == base.search.log2_range("discriminator") == 1.5
    d = RoleSpace.from_config("discriminator", narrow)
    g = RoleSpace.from_config("generator", narrow)
    assert (d.log2_range, g.log2_range) == (0.5, 1.5)
    assert d.action_to_ratio(1.0) == pytest.approx(min(1.0, d.uniform * 2 ** 0.5))
    assert d.action_to_ratio(-1.0) == pytest.approx(d.uniform * 2 ** -0.5)
    with pytest.raises(ValueError, match="unknown role 'D'"):
        narrow.search.log2_range("D")
