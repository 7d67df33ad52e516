"""Upstream pix2pix/CycleGAN preprocessing (``data/base_dataset.py``), written with torchvision.

The pipeline for one PIL image is: optional grayscale (``nc == 1``) -> ``resize_and_crop`` (bicubic
resize to ``load_size x load_size``, then a ``crop_size`` crop) | ``crop`` (a ``crop_size`` crop) |
``none`` (bicubic resize so both sides are multiples of 4) -> horizontal flip (unless ``no_flip``) ->
``ToTensor`` -> ``Normalize`` to ``[-1, 1]``.

As upstream, the crop position and the flip are drawn once per sample (:func:`get_params`) so an
aligned pair gets the same ones for A and B. In eval mode (``train=False``) there is no flip and the
crop is the centre crop, so evaluation is reproducible.

Random draws come from a :class:`torch.Generator` owned by the dataset (:class:`SampleRng`), seeded
from the dataset's seed and, inside a DataLoader worker, from that worker's seed, so workers never
repeat each other's augmentations. :func:`list_images` and :func:`load_rgb` find and decode the
image files, raising :class:`~collabprune.errors.DatasetError` with the folder or file path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from collabprune.config import DataConfig
from collabprune.errors import DatasetError

#: Image file suffixes read by the datasets (lower case; matching is case-insensitive), as upstream.
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class TransformParams:
    """Per-sample random choices shared by the images of one sample.

    :param crop_pos: ``(x, y)`` top-left corner of the crop, pixels, in the (resized) image.
    :param flip: whether to flip horizontally.
    """

    crop_pos: tuple[int, int]
    flip: bool


class SampleRng:
    """A dataset's random generator, re-seeded once per DataLoader worker.

    In the main process the generator is seeded with ``seed``. Inside a worker it is seeded with
    ``seed`` and the worker's seed (which PyTorch derives from the main process's RNG, per epoch), so
    the draws are reproducible under ``torch.manual_seed`` and differ between workers.

    :param seed: the dataset's seed.
    """

    def __init__(self, seed: int) -> None:
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the draws from ``seed`` (so a run that reseeds sees the same augmentations)."""
        self.seed = int(seed)
        self._key: tuple[int, int] | None = None
        self._gen = torch.Generator().manual_seed(self.seed)

    def generator(self) -> torch.Generator:
        """The generator to draw from in the current process/worker."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._key != (info.id, info.seed):
            self._key = (info.id, info.seed)
            mixed = (self.seed * 1_000_003 + info.seed) % (2**63)
            self._gen = torch.Generator().manual_seed(mixed)
        return self._gen

    def randint(self, low: int, high: int) -> int:
        """A uniform integer in ``[low, high]`` (both inclusive)."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator()).item())

    def coin(self) -> bool:
        """A fair coin flip."""
        return bool(torch.rand(1, generator=self.generator()).item() > 0.5)


def get_params(cfg: DataConfig, size: tuple[int, int], train: bool, rng: SampleRng) -> TransformParams:
    """Draw the crop position and flip of one sample (upstream ``get_params``).

    :param cfg: the data config (``preprocess``, ``load_size``, ``crop_size``, ``no_flip``).
    :param size: ``(width, height)`` of the source image, pixels.
    :param train: random crop and flip when True; centre crop and no flip when False.
    :param rng: the dataset's generator.
    :return: the sample's :class:`TransformParams`.
    """
    w, h = size
    if cfg.preprocess == "resize_and_crop":
        w = h = cfg.load_size
    max_x = max(0, w - cfg.crop_size)
    max_y = max(0, h - cfg.crop_size)
    if train:
        x, y = rng.randint(0, max_x), rng.randint(0, max_y)
        flip = (not cfg.no_flip) and rng.coin()
    else:
        x, y = max_x // 2, max_y // 2
        flip = False
    return TransformParams(crop_pos=(x, y), flip=flip)


def _make_multiple(img: Image.Image, base: int = 4) -> Image.Image:
    """Bicubic-resize so both sides are (rounded) multiples of ``base`` (upstream ``__make_power_2``)."""
    ow, oh = img.size
    w = max(base, int(round(ow / base) * base))
    h = max(base, int(round(oh / base) * base))
    if (w, h) == (ow, oh):
        return img
    return img.resize((w, h), Image.BICUBIC)


def get_transform(
    cfg: DataConfig, params: TransformParams, grayscale: bool
) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocessing of one image of a sample (upstream ``get_transform`` with ``params``).

    :param cfg: the data config.
    :param params: the sample's crop position and flip (see :func:`get_params`).
    :param grayscale: convert to 1 channel (when the side's ``nc == 1``).
    :return: a function PIL RGB image -> FloatTensor ``(C, H, W)`` in ``[-1, 1]``, ``C = 1`` if
        ``grayscale`` else 3; ``H = W = crop_size`` for the crop modes (smaller if the image is).
    """

    def apply(img: Image.Image) -> torch.Tensor:
        if grayscale:
            img = img.convert("L")
        if cfg.preprocess == "resize_and_crop":
            img = TF.resize(img, [cfg.load_size, cfg.load_size], InterpolationMode.BICUBIC)
        if cfg.preprocess in ("resize_and_crop", "crop"):
            x, y = params.crop_pos
            w, h = img.size
            img = img.crop((x, y, x + min(cfg.crop_size, w), y + min(cfg.crop_size, h)))
        else:
            img = _make_multiple(img, base=4)
        if params.flip:
            img = TF.hflip(img)
        t = TF.to_tensor(img)
        return TF.normalize(t, [0.5] * t.shape[0], [0.5] * t.shape[0])

    return apply


def check_layout(root: Path, phase: str, mode: str) -> None:
    """Fail early, in one line, when ``root`` holds the other upstream layout than ``mode`` reads.

    ``aligned`` reads ``root/{phase}`` (A|B images, pix2pix); ``unaligned`` reads ``root/{phase}A`` and
    ``root/{phase}B`` (CycleGAN).

    :raises DatasetError: the folders of ``mode`` are missing but those of the other layout exist.
    """
    root = Path(root)
    if mode == "aligned" and not (root / phase).is_dir() and (root / f"{phase}A").is_dir():
        raise DatasetError(f"{root}: holds an unaligned dataset ({phase}A/, {phase}B/), but data.dataset_mode is "
                           f"aligned (model.family=pix2pix reads {phase}/ with A|B images)",
                           hint="set model.family: cyclegan and data.dataset_mode: unaligned, or point data.root "
                                "at a paired dataset")
    if mode == "unaligned" and not (root / f"{phase}A").is_dir() and (root / phase).is_dir():
        raise DatasetError(f"{root}: holds an aligned dataset ({phase}/ with A|B images), but data.dataset_mode is "
                           f"unaligned (model.family=cyclegan reads {phase}A/ and {phase}B/)",
                           hint="set model.family: pix2pix and data.dataset_mode: aligned, or point data.root "
                                "at an unpaired dataset")


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, as upstream), sorted; hidden files skipped.

    :param folder: the split folder, e.g. ``root/train`` or ``root/trainA``.
    :raises DatasetError: if ``folder`` is not a directory or holds no image file.
    """
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: dataset folder not found",
            hint="check data.root and the split name (train/val/test, or trainA/trainB when unaligned)",
        )
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS
    )
    if not files:
        raise DatasetError(
            f"{folder}: dataset folder holds no image ({', '.join(IMG_EXTENSIONS)})",
            hint="put the images in this folder, or build the demo with `collabprune data demo`",
        )
    return files


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as an RGB PIL image (decoded now, so a broken file fails here).

    :param path: the image file.
    :raises DatasetError: ``"<path>: not a readable image"``.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:  # PIL raises many types (OSError, ValueError, SyntaxError, ...)
        raise DatasetError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def check_channels(cfg: DataConfig) -> None:
    """Image datasets give 1 (grayscale) or 3 (RGB) channels per side.

    :raises DatasetError: if ``input_nc`` or ``output_nc`` is neither 1 nor 3.
    """
    for name in ("input_nc", "output_nc"):
        nc = getattr(cfg, name)
        if nc not in (1, 3):
            raise DatasetError(f"data.{name}={nc}: image datasets give 1 or 3 channels", hint="use 1 or 3")
