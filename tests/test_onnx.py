"""ONNX export of a pruned generator: file, dynamic batch axis, onnxruntime == PyTorch within 1e-4.

Two students: the config's U-Net (pix2pix, BatchNorm) and a CycleGAN-style ResNet (InstanceNorm
without affine parameters or running stats, reflection padding), pruned non-uniformly to ~25% of
its MACs. The U-Net is also quantized to int8 (onnxruntime static quantization): which ops really
run int8, how far the outputs move from fp32, and the error paths; the whole ``export --int8`` path
of a searched run, with its held-out metrics, is exercised in tests/test_search_e2e.py.
"""

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
from collabprune.metrics.macs import macs
from collabprune.models import define_D, define_G, init_weights, load_subnet
from collabprune.models.spec import SubnetSpec
from collabprune.models.subnet import NETWORK_FILES, SUBNET_FILE
from collabprune.pruning.groups import discover_groups
from collabprune.pruning.prune import prune_model
from collabprune.pruning.space import ChannelSpace

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from collabprune.onnx_export import ONNX_FILE, OPSET, TOLERANCE, export_onnx  # noqa: E402
from collabprune.quantize import INT8_FILE, OrtGenerator, export_int8, quantize_generator, runtime_precision  # noqa: E402

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


Exported = tuple[torch.nn.Module, SubnetSpec, list[int]]  # (pruned net, its spec, (B, C, H, W) input shape)


def _write_export(out: Path, generator: Exported, discriminator: Exported) -> None:
    """Write an export folder in the layout ``collabprune export`` writes (``subnet.json`` and the
    two state dicts); each network is ``(pruned_net, spec, input_shape)``."""
    meta: dict = {"schema_version": 1}
    for role, (net, spec, shape) in (("generator", generator), ("discriminator", discriminator)):
        atomic_torch_save(net.state_dict(), out / NETWORK_FILES[role])
        meta[role] = {"spec": spec.to_dict(), "channels": spec.kept, "input_shape": list(shape)}
    atomic_write_json(out / SUBNET_FILE, meta)


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
    _write_export(out, (pg, gspec, [1, 3, CROP, CROP]), (pd, dspec, [1, 6, CROP, CROP]))
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


# --- int8 ------------------------------------------------------------------------------------------

def _batches(n: int, seed: int) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, CROP, CROP, generator=gen) * 2 - 1).numpy()
    return [x[i:i + 4] for i in range(0, n, 4)]


def test_int8_runs_convolutions_in_integers_close_to_fp32(export_dir: Path, cfg, tmp_path: Path) -> None:
    export_onnx(export_dir, cfg)
    target = tmp_path / INT8_FILE
    quantize_generator(export_dir / ONNX_FILE, target, _batches(16, 0))
    int8_ops, fp32_ops = runtime_precision(target)
    # the encoder's convolutions run as integer kernels; onnxruntime's CPU provider has none for
    # ConvTranspose (the decoder), which runs fp32 on dequantized weights; the output Tanh stays fp32
    assert int8_ops.get("Conv", 0) >= 5 and int8_ops.get("LeakyRelu", 0) >= 5, int8_ops
    assert fp32_ops.get("ConvTranspose", 0) >= 5 and fp32_ops.get("Tanh") == 1, fp32_ops
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(fp32_ops)
    plain_int8, plain_fp32 = runtime_precision(export_dir / ONNX_FILE)
    assert plain_int8 == {} and plain_fp32.get("Conv", 0) >= 5  # the fp32 model has no integer kernel

    x = torch.from_numpy(_batches(4, 1)[0])  # not the calibration images
    want = OrtGenerator(ort.InferenceSession(str(export_dir / ONNX_FILE), providers=["CPUExecutionProvider"]))(x)
    got = OrtGenerator(ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]))(x)
    assert got.shape == want.shape == x.shape
    assert want.std() > 0.1, "outputs must not be near-constant, else the comparison proves little"
    err = float((got - want).abs().mean())
    print(f"\nint8 test G: {int8_ops} int8, {fp32_ops} fp32; mean |int8 - fp32| {err:.4f} (output std {float(want.std()):.3f})")
    assert 0 < err < 0.1 * float(want.std()), (err, float(want.std()))  # quantized, yet the same image
    assert np.corrcoef(got.flatten().numpy(), want.flatten().numpy())[0, 1] > 0.98


def test_int8_needs_the_fp32_export_and_fails_in_one_line(export_dir: Path, cfg, tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match="generator.onnx: missing"):
        export_int8(tmp_path, cfg, tmp_path / "run")
    export_onnx(export_dir, cfg)
    wrong = [np.zeros((2, 5, CROP, CROP), np.float32)]  # 5 channels: the model takes 3
    with pytest.raises(OnnxExportError, match="int8 quantization failed") as err:
        quantize_generator(export_dir / ONNX_FILE, tmp_path / INT8_FILE, wrong)
    assert "\n" not in str(err.value)


def test_cli_rejects_a_bad_calibration_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from collabprune.cli import main

    rc = main(["export", str(tmp_path), "--out", str(tmp_path / "x"), "--int8", "--calibration-images", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--calibration-images must be >= 1" in err and len(err.strip().splitlines()) == 1


# --- CycleGAN's ResNet generator -------------------------------------------------------------------

RESNET_CROP = 64
RESNET_BUDGET = 0.25  # fraction of the teacher's physical MACs


def _resnet_student() -> tuple[torch.nn.Module, torch.nn.Module, SubnetSpec, float]:
    """A CycleGAN-style ``resnet_6blocks`` (ngf=8, InstanceNorm, reflection padding) and its student
    pruned with the search's own pipeline: a non-uniform request projected onto a 25% MACs budget
    (:meth:`ChannelSpace.project`), then :func:`prune_model`.

    :returns: ``(teacher, pruned, spec, measured MACs fraction)``; networks in eval mode.
    """
    torch.manual_seed(0)
    # init_gain 0.05: outputs spread over [-1, 1] (std ~0.5) without saturating the Tanh
    teacher = init_weights(define_G(3, 3, 8, "resnet_6blocks", "instance", False, inplace=False),
                           init_gain=0.05).eval()
    shape = (1, 3, RESNET_CROP, RESNET_CROP)
    cfg = PruningConfig(round_to=4, min_channels=4, r_min=0.1)
    space = ChannelSpace.of("g", teacher, shape, cfg)
    request = [1.0 if i % 2 == 0 else 0.3 for i in range(space.num_groups)]  # deliberately uneven
    ratios = space.project(request, RESNET_BUDGET)
    pruned, spec = prune_model(teacher, torch.zeros(shape), ratios, cfg)
    fraction = macs(pruned, shape) / macs(teacher, shape)
    return teacher, pruned.eval(), spec, fraction


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, SubnetSpec, float]:
    """An export folder holding the pruned ResNet G (and a pruned unconditional InstanceNorm
    PatchGAN D, as CycleGAN's D_B); also returns the pruned G, its spec and its MACs fraction."""
    _, pg, gspec, fraction = _resnet_student()
    d = init_weights(define_D(3, 8, "basic", norm="instance", inplace=False), init_gain=0.05).eval()
    pd, dspec = _pruned(d, (1, 3, RESNET_CROP, RESNET_CROP), 0.5)
    out = tmp_path_factory.mktemp("export_resnet")
    shape = [1, 3, RESNET_CROP, RESNET_CROP]
    _write_export(out, (pg, gspec, shape), (pd, dspec, shape))
    return out, pg, gspec, fraction


def test_resnet_export_matches_pytorch(resnet_export: tuple[Path, torch.nn.Module, SubnetSpec, float]) -> None:
    """ResNet (reflection padding, InstanceNorm) pruned to ~25% of its MACs with uneven keep ratios:
    ``export_onnx`` verifies itself, and onnxruntime independently equals PyTorch at batch 1 and 2."""
    out, pruned, spec, fraction = resnet_export
    keep = [k / grp["channels"] for k, grp in zip(spec.kept, spec.groups)]
    assert len(set(keep)) > 2, f"keep ratios must be non-uniform, got {keep}"
    # ngf=8 with round_to=4 is coarse (one step of the residual stream is ~3% of the MACs): the
    # projection lands at 0.244, a little under DESIGN.md §5's 98% of the budget
    assert 0.9 * RESNET_BUDGET <= fraction <= RESNET_BUDGET, f"MACs fraction {fraction:.3f}"
    norms = {type(m) for m in pruned.modules()}
    assert torch.nn.InstanceNorm2d in norms and torch.nn.ReflectionPad2d in norms

    cfg = load_config(None, [f"data.crop_size={RESNET_CROP}", f"data.load_size={RESNET_CROP}",
                             "model.net_g=resnet_6blocks", "model.ngf=8", "model.ndf=8", "model.norm=instance"])
    info = export_onnx(out, cfg)
    path = out / ONNX_FILE
    assert path.is_file() and info["opset"] == OPSET
    assert info["input_shape"] == [1, 3, RESNET_CROP, RESNET_CROP]
    assert 0.0 <= info["max_abs_diff"] < TOLERANCE

    # independent check against the network prune_model returned (not the one rebuilt from the folder)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(11)
    diffs = []
    for batch in (1, 2):
        x = torch.rand(batch, 3, RESNET_CROP, RESNET_CROP, generator=gen) * 2 - 1
        (got,) = session.run(None, {name: x.numpy()})
        with torch.inference_mode():
            want = pruned(x).numpy()
        assert got.shape == want.shape == (batch, 3, RESNET_CROP, RESNET_CROP)
        assert want.std() > 0.1, "outputs must not be near-constant, else the tolerance proves little"
        if batch == 2:  # InstanceNorm is per sample: the two outputs differ and each matches
            assert np.max(np.abs(want[0] - want[1])) > 0.1
        diffs.append(float(np.max(np.abs(got - want))))
    assert max(diffs) < 1e-4, f"onnxruntime vs PyTorch max|diff| per batch size: {diffs}"
    print(f"\nONNX ResNet G: MACs fraction {fraction:.3f}, kept {spec.kept}; max|diff| export "
          f"{info['max_abs_diff']:.2e}, batch 1/2 {diffs[0]:.2e}/{diffs[1]:.2e}; latency onnxruntime "
          f"{info['latency']['onnxruntime_cpu_ms']:.2f} ms, torch {info['latency']['torch_cpu_ms']:.2f} ms")
