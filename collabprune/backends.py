"""Latency of a network on a named backend: ``torch-cpu``, ``onnxruntime-cpu``, ``torch-cuda``, and a
description of the machine it was measured on (:func:`machine_info`, also the benchmarks').

What latency budgets (:mod:`collabprune.latency_budget`) are measured and checked with: PyTorch on
the CPU or on CUDA (:func:`~collabprune.metrics.latency.measure_latency`), or the network exported to
ONNX in memory (:func:`~collabprune.onnx_export.write_onnx`) and run by an onnxruntime CPU session
(:func:`~collabprune.onnx_export.ort_latency_ms`).
"""

from __future__ import annotations

import io
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from collabprune.config import LATENCY_BACKENDS
from collabprune.errors import OnnxExportError
from collabprune.metrics.latency import measure_latency
from collabprune.metrics.macs import eval_mode
from collabprune.onnx_export import cpu_session, ort_latency_ms, write_onnx

BACKENDS = LATENCY_BACKENDS


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: CPU, cores, torch and its threads, CUDA device, load average."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


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
    shape = tuple(int(s) for s in input_shape)
    buf = io.BytesIO()
    with eval_mode(model):
        write_onnx(model, torch.zeros(shape), buf)
    try:
        session = cpu_session(buf.getvalue())
    except OnnxExportError as err:
        raise RuntimeError(f"latency backend onnxruntime-cpu: {err}") from None
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    return 1e-3 * ort_latency_ms(session, x, warmup=warmup, repeats=max(1, repeats))


__all__ = ["BACKENDS", "backend_latency_s", "cpu_model", "machine_info"]
