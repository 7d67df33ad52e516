"""int8 export of a pruned generator (``collabprune export --int8``).

onnxruntime's static quantization, not our own kernels: ``generator.onnx`` (written and checked by
:func:`collabprune.onnx_export.export_onnx`) is pre-processed (``quant_pre_process``: shape inference
and graph optimisation, BatchNorm folded into the preceding convolution) and quantized by
``quantize_static`` in the QDQ format: weights int8 per output channel, activations uint8 (the U8S8
scheme onnxruntime recommends for x86 CPUs), ranges from MinMax calibration on the A images of the
training data (``train_split``, no random crop or flip; ``calibration_images`` of them, in batches of
:data:`CALIBRATION_BATCH`). The result is ``generator.int8.onnx``, written to a temporary name and
renamed.

Which layers run int8 is decided by onnxruntime's CPU provider when it loads the QDQ model: it fuses
DequantizeLinear -> op -> QuantizeLinear into an integer kernel (``QLinearConv``, ``QLinearConcat``,
``QLinearLeakyRelu``, ...) where it has one, and runs the op in fp32 between a dequantize and a
quantize where it has none. :func:`runtime_precision` reads that from the optimised graph the
session writes, so the export reports what really runs int8, per op type. With onnxruntime 1.32 on
x86: every ``Conv`` (the U-Net encoder, the ResNet stem, blocks and head), ``LeakyRelu`` and
``Concat`` run int8; ``ConvTranspose`` (the U-Net decoder, the ResNet up-sampling) has no int8 CPU
kernel and runs fp32 on dequantized weights; ``Tanh`` (the output) and ``InstanceNormalization``
(ResNet, unet with instance norm) stay fp32.

The export records the int8 student's held-out metrics (test split,
:meth:`collabprune.heldout.HeldoutEvaluator.measure`) beside the fp32 student's, their largest and
mean absolute output difference, and the onnxruntime CPU latency of both at batch 1.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from collabprune.config import RunConfig
from collabprune.errors import OnnxExportError
from collabprune.io import atomic_path
from collabprune.onnx_export import ONNX_FILE, cpu_session, ort_latency_ms, require_onnx
from collabprune.summary import heldout_evaluator

INT8_FILE = "generator.int8.onnx"
#: calibration batch size (images per onnxruntime run while ranges are collected)
CALIBRATION_BATCH = 8
#: op types of an optimised onnxruntime graph that compute in integers
INT8_OPS = ("QLinearConv", "QLinearConcat", "QLinearLeakyRelu", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
            "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearConvTranspose", "ConvInteger", "MatMulInteger",
            "QLinearMatMul")
#: op types that only move data between precisions
_CAST_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass(frozen=True)
class Int8Export:
    """What ``collabprune export --int8`` wrote and measured (``subnet.json["int8"]``).

    :param file: the quantized model's file name in the export folder.
    :param calibration_images: training A images the activation ranges were calibrated on.
    :param scheme: quantization format and types, e.g. ``"QDQ, weights int8 per channel, activations uint8, MinMax"``.
    :param int8_ops: per op type of the network, how many run int8 in onnxruntime (see :func:`runtime_precision`).
    :param fp32_ops: per op type, how many still run fp32.
    :param heldout_fp32: the fp32 student's test-split metrics (``l1``, ``psnr``, ``ssim``, ``fd_eval``, ``fid``).
    :param heldout_int8: the int8 student's, measured the same way.
    :param max_abs_diff: largest |int8 - fp32| output over the test split (outputs in [-1, 1]).
    :param mean_abs_diff: mean |int8 - fp32| output over the test split.
    :param latency_ms: onnxruntime CPU medians at batch 1, ``{"fp32": ms, "int8": ms}``.
    :param versions: onnx and onnxruntime versions.
    """

    file: str
    calibration_images: int
    scheme: str
    int8_ops: dict[str, int]
    fp32_ops: dict[str, int]
    heldout_fp32: dict[str, float | None]
    heldout_int8: dict[str, float | None]
    max_abs_diff: float
    mean_abs_diff: float
    latency_ms: dict[str, float]
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    def summary(self) -> str:
        """Three lines for a terminal: metrics of fp32 and int8, latency, which ops stay fp32."""
        def cell(name: str) -> str:
            a, b = self.heldout_fp32.get(name), self.heldout_int8.get(name)
            return f"{name} {b:.4g} (fp32 {a:.4g})" if a is not None and b is not None else ""

        metrics = ", ".join(c for c in map(cell, ("l1", "psnr", "ssim", "fd_eval", "fid")) if c)
        ops = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "none"  # noqa: E731
        return (f"int8 {self.file}: test {metrics}; max |int8 - fp32| {self.max_abs_diff:.3f}\n"
                f"  onnxruntime CPU, batch 1: {self.latency_ms['int8']:.2f} ms (fp32 {self.latency_ms['fp32']:.2f} ms)\n"
                f"  ops run int8: {ops(self.int8_ops)}; fp32: {ops(self.fp32_ops)}")


class OrtGenerator(nn.Module):
    """An onnxruntime session as a generator module: (B, C_in, H, W) -> (B, C_out, H, W), CPU, float32.

    Lets :class:`~collabprune.heldout.HeldoutEvaluator` measure an ONNX model exactly as it measures a
    PyTorch one. It has no parameters and cannot be trained.

    :param session: an ``onnxruntime.InferenceSession`` of a generator with one input and one output.
    """

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


def calibration_batches(cfg: RunConfig, images: int, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """The first ``images`` A images of the training data as float32 batches (b, C_in, H, W) in [-1, 1].

    :param cfg: the run config (its ``data`` section).
    :param images: how many images (>= 1; fewer when the training data has fewer).
    :param batch: images per batch.
    :raises ValueError: ``images < 1``.
    :raises DatasetError: the training data is missing.
    """
    from collabprune.data import train_split

    if images < 1:
        raise ValueError(f"calibration needs at least 1 image, got {images}")
    data = train_split(cfg.data, train=False)
    n = min(images, len(data))
    a = torch.stack([data[i]["A"] for i in range(n)]).float().numpy()
    return [a[i:i + batch] for i in range(0, n, batch)]


def quantize_generator(model: Path, target: Path, batches: Sequence[np.ndarray]) -> None:
    """Quantize the fp32 ONNX generator ``model`` to ``target`` (static, QDQ; see the module docstring).

    :param model: an fp32 ONNX generator with one input.
    :param target: where the int8 model is written (directly: the caller renames it into place).
    :param batches: calibration inputs, each (b, C_in, H, W) float32.
    :raises OnnxExportError: the quantization tool fails.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    name = onnx.load(str(model), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[dict[str, np.ndarray]] = iter([{name: b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # per-channel axis notices for InstanceNorm's 1-D constants
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(model), str(pre))
            quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as err:  # the tool raises many types
        raise OnnxExportError(f"{target}: int8 quantization failed ({type(err).__name__}: {err})".split("\n")[0]) from None
    finally:
        quiet.setLevel(level)


def runtime_precision(model: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Which ops of a QDQ model onnxruntime's CPU provider runs in int8, and which in fp32.

    The model is loaded with extended graph optimisations (where QDQ groups become integer kernels)
    and the optimised graph is read back. An integer kernel counts for the op it replaced
    (``QLinearConv`` -> ``Conv``); every other op but (de)quantize nodes runs fp32.

    :param model: an ONNX model file.
    :returns: ``(int8_ops, fp32_ops)``, counts per op type, sorted by name.
    """
    ort = require_onnx()[1]
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimised)
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        nodes = [n.op_type for n in onnx.load(str(optimised)).graph.node]
    int8: dict[str, int] = {}
    fp32: dict[str, int] = {}
    for op in nodes:
        if op in _CAST_OPS:
            continue
        if op in INT8_OPS:
            base = op.replace("QLinear", "").replace("Integer", "")
            int8[base] = int8.get(base, 0) + 1
        else:
            fp32[op] = fp32.get(op, 0) + 1
    return dict(sorted(int8.items())), dict(sorted(fp32.items()))


def export_int8(out: Path, cfg: RunConfig, run_dir: Path, calibration_images: int = 64) -> Int8Export:
    """Write ``out/generator.int8.onnx`` beside ``out/generator.onnx`` and measure it against fp32.

    :param out: an export folder holding ``generator.onnx`` (``collabprune export --onnx``).
    :param cfg: the run's config.
    :param run_dir: the run directory (its held-out cache gives the test split's evaluation network).
    :param calibration_images: training A images to calibrate the activation ranges on.
    :returns: the :class:`Int8Export` record.
    :raises OnnxExportError: ``generator.onnx`` is missing, onnx/onnxruntime are not installed, or the
        quantization fails (no int8 file is left behind).
    :raises DatasetError: the training or test data is missing.
    """
    onnx, ort = require_onnx()
    out = Path(out)
    fp32_path = out / ONNX_FILE
    if not fp32_path.is_file():
        raise OnnxExportError(f"{fp32_path}: missing; the int8 model is quantized from the fp32 ONNX export")
    batches = calibration_batches(cfg, calibration_images)
    target = out / INT8_FILE
    with atomic_path(target) as tmp:
        quantize_generator(fp32_path, tmp, batches)
        int8_ops, fp32_ops = runtime_precision(tmp)
        held = heldout_evaluator(cfg, run_dir)
        fp32_net, int8_net = OrtGenerator(cpu_session(fp32_path)), OrtGenerator(cpu_session(tmp))
        want, got = held.outputs(fp32_net), held.outputs(int8_net)
        diff = (got - want).abs()
        heldout = {"fp32": held.measure_outputs(want), "int8": held.measure_outputs(got)}
        x = held.test_a[:1].float().numpy()
        latency = {"fp32": ort_latency_ms(fp32_net.session, x), "int8": ort_latency_ms(int8_net.session, x)}
    return Int8Export(
        file=INT8_FILE,
        calibration_images=sum(len(b) for b in batches),
        scheme="QDQ, weights int8 per output channel, activations uint8, MinMax calibration",
        int8_ops=int8_ops,
        fp32_ops=fp32_ops,
        heldout_fp32=heldout["fp32"],
        heldout_int8=heldout["int8"],
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        latency_ms=latency,
        versions={"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    )


__all__ = ["INT8_FILE", "Int8Export", "OrtGenerator", "calibration_batches", "export_int8", "quantize_generator",
           "runtime_precision"]
