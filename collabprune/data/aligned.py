"""Aligned (paired) dataset: each file holds A and B side by side (upstream ``aligned`` mode)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from collabprune.config import DataConfig
from collabprune.data.transforms import SampleRng, check_channels, check_layout, get_params, get_transform, list_images, load_rgb
from collabprune.errors import DatasetError


class AlignedDataset(Dataset):
    """Paired images ``root/phase/*.{jpg,png,...}``, each an ``A|B`` image of width ``2 * w``.

    The left half is A and the right half is B. With ``direction='BtoA'`` they are swapped *here*, so
    ``"A"`` is always the generator's input and ``"B"`` its target (unlike upstream, where the model
    swaps). A and B of one sample get the same crop position and flip.

    Items are dicts: ``"A"``: FloatTensor ``(input_nc, H, W)`` in ``[-1, 1]``; ``"B"``: FloatTensor
    ``(output_nc, H, W)`` in ``[-1, 1]``; ``"A_paths"``, ``"B_paths"``: the file path (str).
    ``H = W = crop_size`` for the crop modes; for ``preprocess='none'`` the half-image size rounded to
    multiples of 4.

    :param root: the dataset root (``data.root``).
    :param phase: the split folder name: ``train``, ``val`` or ``test``.
    :param cfg: the data config (preprocessing, direction, channel counts).
    :param train: random crop and flip when True; centre crop, no flip when False (evaluation).
    :param seed: seed of the augmentation draws (see :class:`~collabprune.data.transforms.SampleRng`).
    :raises DatasetError: at construction, if ``root/phase`` is missing or holds no image, or a channel
        count is not 1 or 3; in ``__getitem__``, if a file is not a readable image or its width is odd.
    """

    def __init__(self, root: Path, phase: str, cfg: DataConfig, train: bool = True, seed: int = 0) -> None:
        check_channels(cfg)
        self.root = Path(root)
        self.phase = phase
        self.cfg = cfg
        self.train = train
        self.folder = self.root / phase
        check_layout(self.root, phase, "aligned")
        self.paths = list_images(self.folder)
        self.rng = SampleRng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        path = self.paths[index]
        ab = load_rgb(path)
        w, h = ab.size
        if w < 2 or w % 2 != 0:
            raise DatasetError(
                f"{path}: aligned image must be A|B side by side (even width), got size {w}x{h}",
                hint="aligned mode needs A and B concatenated horizontally; "
                "use dataset_mode=unaligned for trainA/trainB",
            )
        half = w // 2
        left, right = ab.crop((0, 0, half, h)), ab.crop((half, 0, w, h))
        a, b = (right, left) if self.cfg.direction == "BtoA" else (left, right)
        params = get_params(self.cfg, a.size, self.train, self.rng)
        a_t = get_transform(self.cfg, params, grayscale=self.cfg.input_nc == 1)(a)
        b_t = get_transform(self.cfg, params, grayscale=self.cfg.output_nc == 1)(b)
        return {"A": a_t, "B": b_t, "A_paths": str(path), "B_paths": str(path)}
