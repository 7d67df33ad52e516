"""ONNX export of an exported pruned generator (DESIGN.md §6, ``collabprune export --onnx``).

The pruned G is rebuilt from the export folder with :func:`collabprune.models.load_subnet` and
written as ``generator.onnx`` with the TorchScript-based exporter (``dynamo=False``: the dynamo
exporter of torch >= 2.5 needs ``onnxscript``, which the ``onnx`` extra does not install). The input
is ``(batch, input_nc, crop, crop)`` with a dynamic batch axis. Before the file is renamed into place
it is checked with ``onnx.checker`` and run with onnxruntime on the CPU against PyTorch (batch 1
and batch 2); a difference above :data:`TOLERANCE` is an error and leaves no file behind.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from collabprune.config import RunConfig
from collabprune.errors import OnnxExportError
from collabprune.io import atomic_path
from collabprune.metrics.latency import measure_latency
from collabprune.models.subnet import load_subnet

ONNX_FILE = "generator.onnx"
#: ONNX opset written; onnxruntime >= 1.14 runs it, and every op of our networks exists in it.
OPSET = 17
#: largest accepted max-abs difference between onnxruntime and PyTorch outputs (outputs in [-1, 1])
TOLERANCE = 1e-4
_HINT = "install the onnx extra: pip install collabprune[onnx]"


def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime``.

    :raises OnnxExportError: either is not installed.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise OnnxExportError(f"ONNX export needs the packages onnx and onnxruntime ({err})", hint=_HINT) from None
    return onnx, onnxruntime


def cpu_session(model: Path | bytes) -> Any:
    """An onnxruntime CPU session of an ONNX model (a file, or its bytes), warnings silenced.

    :raises OnnxExportError: onnx/onnxruntime are not installed.
    """
    ort = require_onnx()[1]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def write_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path | BinaryIO) -> None:
    """Write ``net`` as ONNX to ``path`` (legacy exporter, opset :data:`OPSET`, input ``input`` and
    output ``output`` with a dynamic batch axis); no check, no rename (:func:`export_onnx` does both).

    :param net: a generator in eval mode.
    :param example: an input (B, C_in, H, W) that fixes C, H and W.
    :param path: the file to write, or a binary buffer (``io.BytesIO``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net,
            (example,),
            path if hasattr(path, "write") else str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=True,
        )


def ort_latency_ms(session: Any, x: np.ndarray, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall-clock time of one onnxruntime run of ``x`` (B, C, H, W), milliseconds.

    :param session: an ``onnxruntime.InferenceSession`` with one input.
    :param x: the input batch, float32.
    :param warmup: untimed runs first.
    :param repeats: timed runs.
    """
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def export_onnx(out: Path, cfg: RunConfig) -> dict[str, Any]:
    """Write ``out/generator.onnx`` for the pruned generator exported in ``out`` and verify it.

    :param out: an export folder (``subnet.json``, ``generator.pt``, ``discriminator.pt``) as
        written by :func:`collabprune.export.export_best`.
    :param cfg: the run config; ``data.input_nc`` and ``data.crop_size`` give the input shape.
    :returns: ``{"file": "generator.onnx", "opset", "input_shape", "dynamic_axes", "max_abs_diff",
        "tolerance", "latency": {"onnxruntime_cpu_ms", "torch_cpu_ms"}, "versions"}``; latencies are
        medians of batch-1 forward passes on the CPU.
    :raises OnnxExportError: onnx/onnxruntime are not installed, the export fails, or onnxruntime's
        output differs from PyTorch's by more than :data:`TOLERANCE` (no file is left behind).
    :raises CheckpointError: the export folder is missing files or its weights do not fit.
    """
    onnx, ort = require_onnx()
    out = Path(out)
    generator, _ = load_subnet(out)
    generator.eval()
    shape = (1, cfg.data.input_nc, cfg.data.crop_size, cfg.data.crop_size)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(shape, generator=gen) * 2 - 1
    check = torch.rand((2, *shape[1:]), generator=gen) * 2 - 1  # batch 2: the dynamic axis works
    target = out / ONNX_FILE
    with atomic_path(target) as tmp:
        try:
            write_onnx(generator, example, tmp)
            onnx.checker.check_model(str(tmp))
        except Exception as err:  # the exporter raises many types
            raise OnnxExportError(f"{target}: ONNX export failed ({type(err).__name__}: {err})".split("\n")[0]) from None
        session = cpu_session(tmp)
        diff = 0.0
        with torch.inference_mode():
            for x in (example, check):
                want = generator(x).numpy()
                got = session.run(None, {"input": x.numpy()})[0]
                if got.shape != want.shape:
                    raise OnnxExportError(f"{target}: onnxruntime output shape {got.shape} != PyTorch {want.shape}")
                diff = max(diff, float(np.max(np.abs(got - want))))
        if not diff < TOLERANCE:
            raise OnnxExportError(
                f"{target}: onnxruntime and PyTorch outputs differ by {diff:.2e} (tolerance {TOLERANCE:.0e})"
            )
        ort_ms = ort_latency_ms(session, example.numpy())
    torch_ms = 1e3 * measure_latency(generator, shape, "cpu", warmup=3, repeats=20)["median_s"]
    return {
        "file": ONNX_FILE,
        "opset": OPSET,
        "input_shape": list(shape),
        "dynamic_axes": {"input": {"0": "batch"}, "output": {"0": "batch"}},
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "latency": {"onnxruntime_cpu_ms": ort_ms, "torch_cpu_ms": torch_ms},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }


__all__ = ["ONNX_FILE", "OPSET", "TOLERANCE", "cpu_session", "export_onnx", "ort_latency_ms", "require_onnx", "write_onnx"]
