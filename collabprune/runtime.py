"""Device choice and seeding shared by training, fine-tuning and evaluation."""

from __future__ import annotations

import random

import numpy as np
import torch

from collabprune.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config device name to a torch device.

    :param name: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    :raises ConfigError: ``cuda`` was asked for and no CUDA device is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is visible", hint="use device: auto")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
