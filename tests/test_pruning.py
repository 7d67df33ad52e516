"""Channel groups, ratios -> pruned network, SubnetSpec round trip and weight inheritance."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from collabprune.config import ModelConfig, PruningConfig, RunConfig
from collabprune.errors import CheckpointError
from collabprune.models import build_generator, define_D, define_G, generator_kwargs, init_weights
from collabprune.models.subnet import build_from_spec, inherit_from_teacher
from collabprune.pruning.groups import discover_groups
from collabprune.pruning.prune import kept_channels, prune_model
from collabprune.models.spec import SubnetSpec, infer_builder

# (builder name, norm, input (B, C, H, W)); ngf/ndf = 8 keeps every test fast.
NETS = {
    "unet_256": ("unet_256", (1, 3, 256, 256)),
    "unet_128": ("unet_128", (1, 3, 128, 128)),
    "resnet_9blocks": ("resnet_9blocks", (1, 3, 64, 64)),
    "resnet_6blocks": ("resnet_6blocks", (1, 3, 64, 64)),
    "basic": ("basic", (1, 6, 64, 64)),
}


def make_net(name: str, norm: str = "batch", width: int = 8, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A network with non-trivial weights and BatchNorm statistics, in eval mode, and an input."""
    torch.manual_seed(seed)
    net_name, shape = NETS[name]
    if net_name == "basic":
        net = define_D(shape[1], width, "basic", 3, norm, inplace=False)
    else:
        net = define_G(shape[1], 3, width, net_name, norm, use_dropout=True, inplace=False)
    init_weights(net, init_gain=0.2)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.bias, 0.0, 0.5)
    with torch.no_grad():  # populate running statistics
        net.train()
        for _ in range(2):
            net(torch.randn(2, *shape[1:]))
    net.eval()
    return net, torch.randn(*shape)


def random_ratios(n: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (0.05 + 0.95 * torch.rand(n, generator=g)).tolist()


def zero_removed(net: nn.Module, groups, spec: SubnetSpec) -> nn.Module:
    """Zero the removed channels in a copy of the unpruned network (conv out-slices and norm affine)."""
    import copy

    out = copy.deepcopy(net)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for grp, entry in zip(groups, spec.groups):
            removed = sorted(set(range(grp.channels)) - set(entry["kept_indices"]))
            if not removed:
                continue
            idx = torch.tensor(removed)
            for n in grp.out_layers:
                m = mods[n]
                if isinstance(m, nn.ConvTranspose2d):
                    m.weight[:, idx] = 0
                else:
                    m.weight[idx] = 0
                if m.bias is not None:
                    m.bias[idx] = 0
            for n in grp.norm_layers:
                m = mods[n]
                if getattr(m, "affine", False):
                    m.weight[idx] = 0
                    m.bias[idx] = 0
    return out


# --------------------------------------------------------------------------- groups


@pytest.mark.parametrize(
    "name,count", [("unet_256", 15), ("unet_128", 13), ("resnet_9blocks", 14), ("resnet_6blocks", 11), ("basic", 4)]
)
def test_group_counts(name: str, count: int) -> None:
    net, x = make_net(name)
    assert len(discover_groups(net, x)) == count


def test_group_features_and_order() -> None:
    net, x = make_net("unet_256")
    groups = discover_groups(net, x)
    assert [g.index for g in groups] == list(range(15))
    assert [g.kind for g in groups] == ["conv"] * 8 + ["deconv"] * 7
    assert groups[0].name == "model.model.0" and groups[0].in_channels == 3
    assert groups[0].feature_hw == (128, 128) and groups[0].kernel == 4 and groups[0].stride == 2
    assert [g.channels for g in groups[:8]] == [8, 16, 32, 64, 64, 64, 64, 64]
    # skip concatenation: the innermost up-conv's channels are the second half of the next up-conv's input
    assert groups[8].in_layers[0][1] == 64
    assert math.isclose(sum(g.macs_share for g in groups), 1.0, rel_tol=1e-9)
    assert all(g.macs > 0 for g in groups)
    assert all("model.model.3" not in g.out_layers for g in groups)  # outermost up-conv never pruned

    res, xr = make_net("resnet_9blocks")
    rg = discover_groups(res, xr)
    stream = rg[2]
    assert stream.name == "model.7" and len(stream.out_layers) == 10 and stream.channels == 32
    assert all("model.26" not in g.out_layers for g in rg)  # last conv never pruned
    d, xd = make_net("basic")
    assert all("model.11" not in g.out_layers for g in discover_groups(d, xd))  # 1-channel head


def test_discover_does_not_modify_model() -> None:
    net, x = make_net("unet_128")
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    discover_groups(net, x)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --------------------------------------------------------------------------- kept channels


@pytest.mark.parametrize(
    "channels,ratio,expected",
    [(64, 1.0, 64), (64, 0.5, 32), (64, 0.55, 32), (64, 0.57, 40), (64, 0.01, 8), (512, 0.3, 152),
     (8, 0.1, 8), (4, 0.5, 4), (12, 1.0, 12), (12, 0.9, 8), (10, 0.99, 8)],
)
def test_kept_channels(channels: int, ratio: float, expected: int) -> None:
    assert kept_channels(channels, ratio, PruningConfig()) == expected


def test_kept_channels_round_to_one() -> None:
    cfg = PruningConfig(round_to=1, min_channels=1)
    assert kept_channels(16, 2 / 16, cfg) == 2
    assert kept_channels(16, 0.01, cfg) == 1


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.5, float("nan"), float("inf")])
def test_kept_channels_bad_ratio(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        kept_channels(64, bad, PruningConfig())


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize(
    "name,norm",
    [("unet_256", "batch"), ("unet_128", "instance"), ("resnet_9blocks", "batch"), ("resnet_6blocks", "instance"),
     ("basic", "batch"), ("basic", "instance"), ("basic", "none")],
)
def test_pruned_equals_zeroed(name: str, norm: str) -> None:
    net, x = make_net(name, norm)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    groups = discover_groups(net, x)
    cfg = PruningConfig(round_to=1, min_channels=1)  # lets every group of these thin nets shrink
    pruned, spec = prune_model(net, x, random_ratios(len(groups), 1), cfg)
    assert all(k < g.channels for k, g in zip(spec.kept, groups) if g.channels > 1)
    assert sum(spec.kept) < sum(g.channels for g in groups)  # something was pruned
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # teacher untouched
    zeroed = zero_removed(net, groups, spec)
    with torch.no_grad():  # float64, so that the only differences are summation-order rounding
        y_pruned, y_zeroed = pruned.double()(x.double()), zeroed.double()(x.double())
    assert y_pruned.shape == net(x).shape
    torch.testing.assert_close(y_pruned, y_zeroed, atol=1e-10, rtol=1e-8)
    # the output layer keeps its output channels
    out_name = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    assert pruned.get_submodule(out_name).out_channels == net.get_submodule(out_name).out_channels


def test_pruned_keeps_mode_and_kept_counts() -> None:
    net, x = make_net("basic", width=16)
    net.train()
    cfg = PruningConfig()
    groups = discover_groups(net, x)
    ratios = [0.5, 0.25, 1.0, 0.6]
    pruned, spec = prune_model(net, x, ratios, cfg)
    assert pruned.training and net.training
    assert spec.kept == [kept_channels(g.channels, r, cfg) for g, r in zip(groups, ratios)] == [8, 8, 64, 80]
    assert [pruned.model[i].out_channels for i in (0, 2, 5, 8)] == spec.kept


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_importance_keeps_largest_channels(importance: str) -> None:
    net, x = make_net("basic", width=16)
    with torch.no_grad():
        net.model[0].weight[[3, 11]] *= 100.0
    cfg = PruningConfig(round_to=1, min_channels=1, importance=importance)
    _, spec = prune_model(net, x, [2 / 16, 1.0, 1.0, 1.0], cfg)
    assert spec.groups[0]["kept_indices"] == [3, 11]


def test_random_importance_is_seeded() -> None:
    net, x = make_net("basic", width=16)
    cfg = PruningConfig(importance="random", round_to=1, min_channels=1)
    ratios = [0.5, 0.5, 0.5, 0.5]
    a = prune_model(net, x, ratios, cfg, seed=1)[1].groups
    b = prune_model(net, x, ratios, cfg, seed=1)[1].groups
    c = prune_model(net, x, ratios, cfg, seed=2)[1].groups
    assert a == b and a != c


@pytest.mark.parametrize(
    "ratios,match",
    [([0.5] * 3, "expected 4 keep ratios"), ([0.5, 0.5, 0.0, 0.5], r"\(0, 1\]"), ([0.5, 1.2, 0.5, 0.5], r"\(0, 1\]"),
     ([0.5, float("nan"), 0.5, 0.5], r"\(0, 1\]"), (["a", 1, 1, 1], "sequence of numbers")],
)
def test_bad_ratios(ratios: list, match: str) -> None:
    net, x = make_net("basic")
    with pytest.raises(ValueError, match=match):
        prune_model(net, x, ratios, PruningConfig())


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize("name,norm", [("unet_256", "batch"), ("resnet_9blocks", "instance"), ("basic", "batch")])
def test_spec_round_trip_and_inheritance(name: str, norm: str) -> None:
    net, x = make_net(name, norm, width=16)
    groups = discover_groups(net, x)
    pruned, spec = prune_model(net, x, random_ratios(len(groups), 7), PruningConfig())
    spec2 = SubnetSpec.from_json(spec.to_json())
    assert spec2.to_dict() == spec.to_dict()
    rebuilt = build_from_spec(spec2)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
    inherited = inherit_from_teacher(spec2, net)
    ref = pruned.state_dict()
    got = inherited.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    with torch.no_grad():
        assert torch.equal(inherited(x), pruned(x))


def test_spec_layers_content() -> None:
    net, x = make_net("unet_256", width=16)
    groups = discover_groups(net, x)
    _, spec = prune_model(net, x, [0.5] * len(groups), PruningConfig())
    d = spec.to_dict()
    assert d["schema_version"] == 1 and d["family"] == "unet" and d["builder"] == "define_G"
    assert d["kwargs"]["net_g"] == "unet_256" and d["kwargs"]["inplace"] is False
    convs = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert set(convs) <= set(d["layers"])
    outer = d["layers"]["model.model.3"]  # outermost up-conv: input pruned, output intact
    assert outer["out"] == 3 and outer["out_idx"] is None and outer["in"] == len(outer["in_idx"]) == 16
    first = d["layers"]["model.model.0"]
    assert first["in_idx"] is None and first["out_idx"] == d["groups"][0]["kept_indices"]


def test_infer_builder_matches_config() -> None:
    cfg = RunConfig(model=ModelConfig(ngf=8, norm="instance"))
    with torch.device("meta"):
        g = build_generator(cfg, inplace=False)
    family, builder, kwargs = infer_builder(g)
    assert (family, builder) == ("unet", "define_G")
    assert kwargs == generator_kwargs(cfg, inplace=False)
    with pytest.raises(ValueError):
        infer_builder(nn.Conv2d(3, 3, 1))


def test_spec_errors() -> None:
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SubnetSpec.from_json("{nope")
    with pytest.raises(CheckpointError, match="schema_version"):
        SubnetSpec.from_dict({"schema_version": 99})
    net, x = make_net("basic")
    _, spec = prune_model(net, x, [1.0, 0.5, 0.5, 0.5], PruningConfig())
    other, _ = make_net("basic", width=16)
    with pytest.raises(CheckpointError, match="teacher does not match"):
        inherit_from_teacher(spec, other)


def test_subnet_module_does_not_import_torch_pruning() -> None:
    code = (
        "import sys, collabprune.models.subnet, collabprune.models.spec; "
        "assert 'torch_pruning' not in sys.modules, 'torch_pruning imported'"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_frozen_model_still_has_groups() -> None:
    """A frozen teacher (requires_grad False) is traced the same, and stays frozen."""
    net = define_G(3, 3, 8, "unet_128", "batch", True, inplace=False).requires_grad_(False)
    groups = discover_groups(net, torch.zeros(1, 3, 128, 128))
    assert len(groups) == 13
    assert not any(p.requires_grad for p in net.parameters())
