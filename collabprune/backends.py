"""Latency of a network on a named backend: ``torch-cpu``, ``onnxruntime-cpu``, ``torch-cuda``.

What latency budgets (:mod:`collabprune.latency_budget`) are measured and checked with: PyTorch on
the CPU or on CUDA (:func:`~collabprune.metrics.latency.measure_latency`), or the network exported to
ONNX in memory (:func:`~collabprune.onnx_export.write_onnx`) and run by an onnxruntime CPU session
(:func:`~collabprune.onnx_export.ort_latency_ms`).
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from torch import nn

from collabprune.config import LATENCY_BACKENDS
from collabprune.errors import OnnxExportError
from collabprune.metrics.latency import measure_latency
from collabprune.metrics.macs import eval_mode
from collabprune.onnx_export import ort_latency_ms, require_onnx, write_onnx

BACKENDS = LATENCY_BACKENDS


def backend_latency_s(model: nn.Module, input_shape: Sequence[int], backend: str, warmup: int = 2,
                      repeats: int = 7) -> float:
    """Median seconds of one forward pass of ``model`` on a random ``input_shape`` (B, C, H, W) input.

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
    try:
        ort = require_onnx()[1]
    except OnnxExportError as err:
        raise RuntimeError(f"latency backend onnxruntime-cpu: {err}") from None
    shape = tuple(int(s) for s in input_shape)
    buf = io.BytesIO()
    with eval_mode(model):
        write_onnx(model, torch.zeros(shape), buf)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    return 1e-3 * ort_latency_ms(session, x, warmup=warmup, repeats=max(1, repeats))


__all__ = ["BACKENDS", "backend_latency_s"]
