"""Upstream-compatible networks: parameter counts, strict loading, InstanceNorm clean-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collabprune.errors import CheckpointError
from collabprune.models import define_D, define_G, init_weights, load_discriminator, load_generator


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "net, kwargs, expected",
    [
        ("unet_256", dict(norm="batch", use_dropout=True), 54_413_955),
        ("unet_128", dict(norm="batch"), 41_828_995),
        ("resnet_9blocks", dict(norm="instance"), 11_378_179),
    ],
)
def test_generator_parameter_counts(net: str, kwargs: dict, expected: int) -> None:
    assert n_params(define_G(3, 3, 64, net, **kwargs)) == expected


def test_patchgan_parameter_count() -> None:
    assert n_params(define_D(6, 64, "basic", norm="batch")) == 2_768_705


def test_upstream_module_names() -> None:
    g = define_G(3, 3, 8, "unet_256", "batch", True)
    keys = set(g.state_dict())
    assert "model.model.0.weight" in keys  # outermost down-conv
    assert "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1.weight" in keys  # innermost down-conv
    assert "model.model.3.weight" in keys and "model.model.3.bias" in keys  # outermost up-conv has a bias
    r = define_G(3, 3, 8, "resnet_9blocks", "instance")
    assert "model.10.conv_block.1.weight" in r.state_dict() and "model.1.bias" in r.state_dict()
    d = define_D(6, 8, "basic")
    assert "model.11.weight" in d.state_dict() and "model.3.running_mean" in d.state_dict()


@pytest.mark.parametrize("net, norm", [("unet_256", "batch"), ("resnet_6blocks", "instance"), ("unet_128", "none")])
def test_strict_round_trip(tmp_path: Path, net: str, norm: str) -> None:
    g = init_weights(define_G(3, 3, 8, net, norm, use_dropout=True)).eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(g.state_dict(), path)
    loaded = load_generator(path, net_g=net, norm=norm, ngf=8, use_dropout=True)
    size = 256 if net == "unet_256" else 128 if net == "unet_128" else 64
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(g(x), loaded(x))


def test_instance_norm_running_stats_are_dropped(tmp_path: Path) -> None:
    g = define_G(3, 3, 8, "resnet_6blocks", "instance")
    sd = g.state_dict()
    # An old-PyTorch upstream checkpoint: InstanceNorm layers carried running stats.
    sd["model.2.running_mean"] = torch.zeros(8)
    sd["model.2.running_var"] = torch.ones(8)
    sd["model.2.num_batches_tracked"] = torch.tensor(0)
    sd = {f"module.{k}": v for k, v in sd.items()}  # DataParallel prefix
    path = tmp_path / "old_net_G.pth"
    torch.save(sd, path)
    loaded = load_generator(path, net_g="resnet_6blocks", norm="instance", ngf=8)
    assert loaded.model[2].running_mean is None


def test_mismatch_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.pth"
    torch.save(define_D(6, 8, "n_layers", n_layers_d=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing keys \['model\.9\.weight'"):
        load_discriminator(path, net_d="basic", ndf=8)
    torch.save(define_D(6, 16, "basic").state_dict(), path)
    with pytest.raises(CheckpointError, match="has shape"):
        load_discriminator(path, net_d="basic", ndf=8)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_discriminator(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.pth")


def test_discriminator_features_are_penultimate() -> None:
    d = define_D(6, 8, "basic").eval()
    x = torch.randn(2, 6, 64, 64)
    feats = d.features(x)
    assert feats.shape[1] == 64 and torch.allclose(d.model[-1](feats), d(x))
