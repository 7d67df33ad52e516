"""Datasets in upstream pix2pix/CycleGAN layouts, the reward split, and the demo dataset builder.

- ``aligned``: ``root/{train,val,test}/*.png``, each file ``A|B`` side by side.
- ``unaligned``: ``root/{train,val,test}A`` and ``root/{train,val,test}B``.

The reward is never computed on the test split (DESIGN.md §4): :func:`reward_split` gives the ``val``
split when the dataset has one, else a held-out part of ``train``; :func:`train_split` gives the
matching training part (all of ``train``, or ``train`` minus that held-out part).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from collabprune.config import DataConfig
from collabprune.data.aligned import AlignedDataset
from collabprune.data.demo import build_demo_dataset, demo_is_built
from collabprune.data.unaligned import UnalignedDataset
from collabprune.errors import DatasetError

__all__ = [
    "AlignedDataset",
    "UnalignedDataset",
    "build_demo_dataset",
    "demo_is_built",
    "has_val_split",
    "heldout_split",
    "make_dataset",
    "reseed",
    "reward_split",
    "train_split",
]

#: Seed of the train/held-out split when the dataset has no ``val`` split.
HELDOUT_SEED = 0


def make_dataset(cfg: DataConfig, phase: str, train: bool = True, seed: int = 0) -> AlignedDataset | UnalignedDataset:
    """The dataset of one split, chosen by ``cfg.dataset_mode``.

    :param cfg: the data config (``root``, ``dataset_mode``, preprocessing).
    :param phase: ``train``, ``val`` or ``test``.
    :param train: random crop/flip when True; deterministic (centre crop, no flip) when False.
    :param seed: seed of the random draws.
    :raises DatasetError: if the split's folder(s) are missing or hold no image.
    """
    cls = AlignedDataset if cfg.dataset_mode == "aligned" else UnalignedDataset
    return cls(cfg.root, phase, cfg, train=train, seed=seed)


def reseed(dataset: Dataset, seed: int) -> None:
    """Restart the augmentation draws of ``dataset`` (or of the dataset under a ``Subset``) from ``seed``."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    dataset.rng.reseed(seed)


def heldout_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Split a dataset into disjoint ``(rest, held_out)`` subsets, deterministically for a seed.

    The held-out part has ``max(1, round(fraction * n))`` items (at most ``n - 1``); both index lists
    are sorted.

    :param dataset: any sized dataset, ``n = len(dataset)``.
    :param fraction: held-out fraction, in ``(0, 1)``.
    :param seed: seed of the permutation.
    :return: ``(rest, held_out)``.
    :raises DatasetError: if the dataset has fewer than 2 items.
    :raises ValueError: if ``fraction`` is not in ``(0, 1)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction}: must be in (0, 1)")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise DatasetError(f"cannot hold out part of a dataset of {n} item(s)", hint="add images or a val split")
    n_held = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return Subset(dataset, sorted(perm[n_held:])), Subset(dataset, sorted(perm[:n_held]))


def has_val_split(cfg: DataConfig) -> bool:
    """Whether the dataset has a ``val`` split (``root/val``, or ``root/valA`` when unaligned)."""
    return (cfg.root / ("val" if cfg.dataset_mode == "aligned" else "valA")).is_dir()


def reward_split(cfg: DataConfig, seed: int = HELDOUT_SEED) -> Dataset:
    """The split the reward is computed on, in eval mode (never the test split).

    :param cfg: the data config.
    :param seed: seed of the held-out split (used only when there is no ``val`` split).
    :return: the ``val`` split if present, else the held-out part (``cfg.heldout_fraction``) of ``train``.
    :raises DatasetError: if the needed folders are missing or empty.
    """
    if has_val_split(cfg):
        return make_dataset(cfg, "val", train=False)
    return heldout_split(make_dataset(cfg, "train", train=False), cfg.heldout_fraction, seed)[1]


def train_split(cfg: DataConfig, train: bool = True, seed: int = HELDOUT_SEED) -> Dataset:
    """The training data that does not overlap :func:`reward_split` (for teacher training/fine-tuning).

    :param cfg: the data config.
    :param train: random crop/flip when True.
    :param seed: seed of the held-out split (must match :func:`reward_split`'s).
    :return: all of ``train`` if a ``val`` split exists, else ``train`` minus the held-out part.
    :raises DatasetError: if the needed folders are missing or empty.
    """
    ds = make_dataset(cfg, "train", train=train)
    if has_val_split(cfg):
        return ds
    return heldout_split(ds, cfg.heldout_fraction, seed)[0]
