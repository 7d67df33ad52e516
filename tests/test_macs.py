"""MACs in both conventions, parameter counts, the fast MACs estimator and measured latency."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from collabprune.config import PruningConfig
from collabprune.metrics.latency import measure_latency
from collabprune.metrics.macs import conv_layer_costs, macs, macs_published, params
from collabprune.pruning.costs import estimate_macs, group_macs_table
from collabprune.models import define_D, define_G, init_weights
from collabprune.pruning.groups import discover_groups
from collabprune.pruning.prune import kept_channels, prune_model


def meta_G(net_g: str, ngf: int = 64, norm: str = "batch") -> nn.Module:
    """A full-size generator on the meta device: FlopCounterMode counts shapes, nothing is computed."""
    with torch.device("meta"):
        return define_G(3, 3, ngf, net_g, norm, use_dropout=False, inplace=False)


def on_meta(net: nn.Module) -> nn.Module:
    """A shape-only copy of ``net``: counting MACs on it runs no arithmetic."""
    return copy.deepcopy(net).to("meta")


def test_unet_256_macs_both_conventions() -> None:
    g = meta_G("unet_256")
    assert round(macs(g, (1, 3, 256, 256)) / 1e9, 2) == 6.05
    assert round(macs_published(g, (1, 3, 256, 256)) / 1e9, 1) == 18.1
    assert macs(g, (2, 3, 256, 256)) == 2 * macs(g, (1, 3, 256, 256))


def test_resnet_9blocks_macs_both_conventions() -> None:
    g = meta_G("resnet_9blocks")
    assert round(macs_published(g, (1, 3, 256, 256)) / 1e9, 1) == 56.8
    assert round(macs(g, (1, 3, 256, 256)) / 1e9, 1) == 49.6
    # no ConvTranspose2d in a discriminator: both conventions agree
    with torch.device("meta"):
        d = define_D(6, 64, "basic", 3, "batch", inplace=False)
    assert macs(d, (1, 6, 256, 256)) == macs_published(d, (1, 6, 256, 256))


def test_params() -> None:
    assert params(meta_G("unet_256")) == 54_413_955  # upstream pix2pix prints 54.414 M
    assert params(meta_G("resnet_9blocks", norm="instance")) == 11_378_179  # upstream CycleGAN: 11.378 M
    assert params(nn.Conv2d(3, 8, 3)) == 3 * 8 * 9 + 8


def test_layer_costs_match_flop_counter() -> None:
    g = meta_G("unet_256")
    costs = conv_layer_costs(g, torch.zeros(1, 3, 256, 256, device="meta"))
    assert len(costs) == 16
    assert sum(c.macs for c in costs.values()) == macs(g)
    assert sum(c.macs_published for c in costs.values()) == macs_published(g)
    up = costs["model.model.3"]  # outermost up-conv: 128x128 -> 256x256
    assert up.kind == "deconv" and up.macs_published == 4 * up.macs


def test_counting_has_no_side_effects() -> None:
    torch.manual_seed(0)
    d = init_weights(define_D(6, 8, "basic", 3, "batch", inplace=False))
    d.train()
    before = {k: v.clone() for k, v in d.state_dict().items()}
    macs(d, (2, 6, 64, 64))
    macs_published(d, (2, 6, 64, 64))
    assert d.training and all(m.training for m in d.modules())
    assert all(torch.equal(before[k], v) for k, v in d.state_dict().items())


CASES = [
    ("unet_256", "batch", (1, 3, 256, 256)),
    ("unet_128", "instance", (1, 3, 128, 128)),
    ("resnet_9blocks", "batch", (1, 3, 64, 64)),
    ("basic", "batch", (1, 6, 64, 64)),
]


@pytest.mark.parametrize("name,norm,shape", CASES)
def test_estimate_macs_equals_measured(name: str, norm: str, shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    if name == "basic":
        net = define_D(6, 16, "basic", 3, norm, inplace=False)
    else:
        net = define_G(3, 3, 8, name, norm, use_dropout=False, inplace=False)
    net.eval()
    x = torch.randn(*shape)
    groups = discover_groups(net, x)
    table = group_macs_table(net, groups, shape)
    full = [g.channels for g in groups]
    assert estimate_macs(table, full) == macs(net, shape)  # one real count, the rest on meta copies
    assert estimate_macs(table, full, published=True) == macs_published(on_meta(net), shape)
    cfg = PruningConfig(round_to=4, min_channels=4)
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        ratios = (0.05 + 0.95 * torch.rand(len(groups), generator=gen)).tolist()
        kept = [kept_channels(g.channels, r, cfg) for g, r in zip(groups, ratios)]
        pruned, spec = prune_model(net, x, ratios, cfg)
        assert spec.kept == kept
        pruned = on_meta(pruned)
        assert estimate_macs(table, kept) == macs(pruned, shape)
        assert estimate_macs(table, kept, published=True) == macs_published(pruned, shape)


def test_estimate_macs_is_fast_and_checks_length() -> None:
    g = meta_G("resnet_9blocks")  # tracing works on the meta device too: no real forward pass
    groups = discover_groups(g, torch.zeros(1, 3, 256, 256, device="meta"))
    table = group_macs_table(g, groups, (1, 3, 256, 256))
    kept = [int(c) // 2 for c in table.channels]
    t0 = time.perf_counter()
    for _ in range(1000):
        estimate_macs(table, kept)
    assert (time.perf_counter() - t0) / 1000 < 1e-3  # generous: about 10 microseconds on a laptop
    assert estimate_macs(table, list(table.channels), published=True) == macs_published(g)
    with pytest.raises(ValueError, match="entries"):
        estimate_macs(table, kept[:-1])


def test_measure_latency() -> None:
    d = define_D(6, 8, "basic", 3, "batch", inplace=False)
    d.train()
    out = measure_latency(d, (2, 6, 64, 64), device="cpu", warmup=1, repeats=3)
    assert set(out) == {"median_s", "p90_s", "repeats", "device", "batch"}
    assert 0 < out["median_s"] <= out["p90_s"] and out["repeats"] == 3 and out["batch"] == 2
    assert out["device"] == "cpu" and d.training
    with pytest.raises(ValueError):
        measure_latency(d, (1, 6, 64, 64), repeats=0)
