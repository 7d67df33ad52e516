"""Measured forward latency of a network (DESIGN.md §3: recorded beside the MACs)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from collabprune.metrics.macs import eval_mode


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int] = (1, 3, 256, 256),
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, Any]:
    """Wall-clock time of one eval-mode forward pass under ``torch.inference_mode``.

    The model is moved to ``device`` for the measurement and moved back afterwards; its train/eval
    flags are restored. On CUDA every timed call is bracketed by ``torch.cuda.synchronize``.

    :param model: the network.
    :param input_shape: (B, C, H, W) of the random input.
    :param device: ``cpu``, ``cuda``, ``cuda:1``, ...
    :param warmup: untimed calls first (allocator, cuDNN autotuning).
    :param repeats: timed calls (>= 1).
    :return: ``{"median_s", "p90_s", "repeats", "device", "batch"}``; times in seconds per forward
        pass of the whole batch.
    :raises ValueError: ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    dev = torch.device(device)
    p = next(iter(model.parameters()), None)
    home = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    model.to(dev)
    times: list[float] = []
    try:
        x = torch.randn(tuple(int(s) for s in input_shape), device=dev, dtype=dtype)
        with eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                model(x)
            sync()
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - t0)
    finally:
        model.to(home)
    arr = np.asarray(times)
    return {
        "median_s": float(np.median(arr)),
        "p90_s": float(np.percentile(arr, 90)),
        "repeats": int(repeats),
        "device": str(dev),
        "batch": int(input_shape[0]),
    }



#: latency backends a budget or a table can name (DESIGN.md §3; issue "Budgets users think in")
BACKENDS = ("torch-cpu", "onnxruntime-cpu", "torch-cuda")


def backend_latency_s(model: nn.Module, input_shape: Sequence[int], backend: str, warmup: int = 2,
                      repeats: int = 7) -> float:
    """Median seconds of one forward pass of ``model`` on ``input_shape`` (B, C, H, W) on a named backend.

    ``torch-cpu`` and ``torch-cuda`` time the module itself (:func:`measure_latency`);
    ``onnxruntime-cpu`` exports it to ONNX in memory (TorchScript exporter, opset 17) and times an
    onnxruntime CPU session on a random input.

    :param model: the network (eval mode is used; its flags are restored).
    :param input_shape: (B, C, H, W).
    :param backend: one of :data:`BACKENDS`.
    :param warmup: untimed runs first.
    :param repeats: timed runs.
    :raises ValueError: unknown backend.
    :raises RuntimeError: ``torch-cuda`` without a CUDA device, or ``onnxruntime-cpu`` without onnxruntime.
    """
    if backend == "torch-cpu":
        return measure_latency(model, input_shape, "cpu", warmup, repeats)["median_s"]
    if backend == "torch-cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("latency backend torch-cuda: no CUDA device visible to this process")
        return measure_latency(model, input_shape, "cuda", warmup, repeats)["median_s"]
    if backend != "onnxruntime-cpu":
        raise ValueError(f"unknown latency backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    import io
    import warnings

    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError(f"latency backend onnxruntime-cpu needs onnxruntime ({err})") from None
    shape = tuple(int(s) for s in input_shape)
    buf = io.BytesIO()
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


__all__ = ["BACKENDS", "backend_latency_s", "measure_latency"]
