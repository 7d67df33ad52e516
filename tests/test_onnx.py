"""ONNX export of a pruned generator: file, dynamic batch axis, onnxruntime == PyTorch within 1e-4."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from collabprune.config import PruningConfig, load_config
from collabprune.errors import OnnxExportError
from collabprune.io import atomic_torch_save, atomic_write_json
from collabprune.models import define_D, define_G, init_weights, load_subnet
from collabprune.models.subnet import NETWORK_FILES, SUBNET_FILE
from collabprune.pruning.groups import discover_groups
from collabprune.pruning.prune import prune_model

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from collabprune.onnx_export import ONNX_FILE, OPSET, TOLERANCE, export_onnx  # noqa: E402

CROP = 128  # unet_128 needs 128 x 128 inputs


@torch.no_grad()
def _calibrate_norm_stats(net: torch.nn.Module, channels: int, seed: int) -> None:
    """Real BatchNorm running statistics (eval mode uses them): cumulative averages over a few
    random batches, so activations are normalised as in a trained network."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    for _ in range(3):
        net(torch.rand(4, channels, CROP, CROP, generator=gen) * 2 - 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    net.eval()


def _pruned(net: torch.nn.Module, shape: tuple[int, ...], keep: float) -> tuple[torch.nn.Module, object]:
    example = torch.randn(shape)
    n = len(discover_groups(net, example))
    ratios = [keep if i % 2 == 0 else 1.0 for i in range(n)]  # mixed ratios: some groups unpruned
    return prune_model(net, example, ratios, PruningConfig(round_to=4, min_channels=4))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder in the layout ``collabprune export`` writes, with a small pruned pair."""
    torch.manual_seed(0)
    g = init_weights(define_G(3, 3, 8, "unet_128", "batch", True, inplace=False), init_gain=0.1)
    d = init_weights(define_D(6, 8, "basic", inplace=False), init_gain=0.1)
    _calibrate_norm_stats(g, 3, 1)
    _calibrate_norm_stats(d, 6, 2)
    pg, gspec = _pruned(g, (1, 3, CROP, CROP), 0.5)
    pd, dspec = _pruned(d, (1, 6, CROP, CROP), 0.5)
    out = tmp_path_factory.mktemp("export")
    atomic_torch_save(pg.state_dict(), out / NETWORK_FILES["generator"])
    atomic_torch_save(pd.state_dict(), out / NETWORK_FILES["discriminator"])
    atomic_write_json(out / SUBNET_FILE, {
        "schema_version": 1,
        "generator": {"spec": gspec.to_dict(), "channels": gspec.kept, "input_shape": [1, 3, CROP, CROP]},
        "discriminator": {"spec": dspec.to_dict(), "channels": dspec.kept, "input_shape": [1, 6, CROP, CROP]},
    })
    assert gspec.kept != [grp["channels"] for grp in gspec.groups], "the test G must really be pruned"
    return out


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, [f"data.crop_size={CROP}", f"data.load_size={CROP}", "model.net_g=unet_128",
                              "model.ngf=8", "model.ndf=8"])


def test_export_matches_pytorch(export_dir: Path, cfg) -> None:
    info = export_onnx(export_dir, cfg)
    path = export_dir / ONNX_FILE
    assert info["file"] == ONNX_FILE and path.is_file()
    assert info["opset"] == OPSET
    assert 0.0 <= info["max_abs_diff"] < TOLERANCE
    assert info["latency"]["onnxruntime_cpu_ms"] > 0 and info["latency"]["torch_cpu_ms"] > 0
    json.dumps(info)  # plain data: goes into subnet.json
    assert not [p for p in export_dir.iterdir() if p.name.endswith(".tmp")], "no temporary file left"

    # independent check: onnxruntime vs the PyTorch network rebuilt by load_subnet, batch 3
    g, _ = load_subnet(export_dir)
    x = torch.rand(3, 3, CROP, CROP, generator=torch.Generator().manual_seed(7)) * 2 - 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        want = g(x).numpy()
    assert got.shape == (3, 3, CROP, CROP)
    assert want.std() > 0.1, "outputs must not be near-constant, else the tolerance proves little"
    assert np.max(np.abs(got - want)) < 1e-4
    print(f"\nONNX test G: max|diff| {info['max_abs_diff']:.2e}; latency onnxruntime "
          f"{info['latency']['onnxruntime_cpu_ms']:.2f} ms, torch {info['latency']['torch_cpu_ms']:.2f} ms")


def test_missing_extra_is_one_line_error(export_dir: Path, cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(OnnxExportError) as err:
        export_onnx(export_dir, cfg)
    assert "pip install collabprune[onnx]" in str(err.value)
    assert "\n" not in str(err.value)
