"""Unaligned (unpaired) dataset: ``root/{phase}A`` and ``root/{phase}B`` (upstream ``unaligned`` mode)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from collabprune.config import DataConfig
from collabprune.data.transforms import SampleRng, check_channels, check_layout, get_params, get_transform, list_images, load_rgb


class UnalignedDataset(Dataset):
    """Unpaired images from two folders, ``root/{phase}A`` and ``root/{phase}B``.

    ``len`` is ``max(len A, len B)``. Item ``i`` takes A image ``i % len A`` and, as upstream, a random
    B image when ``train`` (drawn from the dataset's seeded generator), else B image ``i % len B``.
    With ``direction='BtoA'`` the folders are swapped, so ``"A"`` is always the generator's input.
    A and B get independent crops and flips (there is no pairing to keep).

    Items are dicts: ``"A"``: FloatTensor ``(input_nc, H, W)`` in ``[-1, 1]``; ``"B"``: FloatTensor
    ``(output_nc, H, W)`` in ``[-1, 1]``; ``"A_paths"``, ``"B_paths"``: the two file paths (str).

    :param root: the dataset root (``data.root``).
    :param phase: the split name: ``train``, ``val`` or ``test`` (folders ``{phase}A``, ``{phase}B``).
    :param cfg: the data config (preprocessing, direction, channel counts).
    :param train: random crop, flip and B index when True; deterministic when False.
    :param seed: seed of the random draws.
    :raises DatasetError: at construction, if either folder is missing or empty, or a channel count is
        not 1 or 3; in ``__getitem__``, if a file is not a readable image.
    """

    def __init__(self, root: Path, phase: str, cfg: DataConfig, train: bool = True, seed: int = 0) -> None:
        check_channels(cfg)
        self.root = Path(root)
        self.phase = phase
        self.cfg = cfg
        self.train = train
        first, second = (f"{phase}B", f"{phase}A") if cfg.direction == "BtoA" else (f"{phase}A", f"{phase}B")
        self.dir_a, self.dir_b = self.root / first, self.root / second
        check_layout(self.root, phase, "unaligned")
        self.a_paths = list_images(self.dir_a)
        self.b_paths = list_images(self.dir_b)
        self.rng = SampleRng(seed)

    def __len__(self) -> int:
        return max(len(self.a_paths), len(self.b_paths))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        a_path = self.a_paths[index % len(self.a_paths)]
        if self.train:
            b_path = self.b_paths[self.rng.randint(0, len(self.b_paths) - 1)]
        else:
            b_path = self.b_paths[index % len(self.b_paths)]
        a, b = load_rgb(a_path), load_rgb(b_path)
        a_t = get_transform(self.cfg, get_params(self.cfg, a.size, self.train, self.rng), self.cfg.input_nc == 1)(a)
        b_t = get_transform(self.cfg, get_params(self.cfg, b.size, self.train, self.rng), self.cfg.output_nc == 1)(b)
        return {"A": a_t, "B": b_t, "A_paths": str(a_path), "B_paths": str(b_path)}
