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


__all__ = ["measure_latency"]
