"""The demo dataset: a paired task built from real photographs that ship inside installed packages.

Each source photograph (read straight from the ``skimage/data`` folder of the installed
scikit-image, plus scikit-learn's two sample images when scikit-learn is installed, so nothing is
ever downloaded) gives random square crops, resized to ``size``. For each crop B is the photo crop and
A is made from it by the task (:data:`TASKS`):

- ``restore`` (the default): A is the crop blurred (Gaussian, sigma 1.5 px at 128 px) plus Gaussian
  noise (sd 20/255), B the clean crop;
- ``colourise``: A is the crop's luminance (ITU-R 601 grey, 3 equal channels);
- ``edges``: A is the crop's Canny edge map (black edges on white).

The pair is written as one aligned ``A|B`` PNG, so the real :class:`~collabprune.data.AlignedDataset`
reads it. Which task the demo uses was chosen by measurement (README, "The demo task").

Splits never share pixels: every photograph is cut into a 3x3 grid of blocks (:data:`BLOCKS`); the
centre block is the test region, the top-right block the val region, the other seven the train
region, and every crop lies inside one block of its split. So the test split holds unseen parts of
the photographs the teacher learned from, surrounded by parts it saw (a colour palette learned on one
photograph does not transfer to a photograph of something else). The build is deterministic for a
seed (same bytes for the same scikit-image/Pillow versions) and atomic: it is written into a temporary folder beside ``out`` and
renamed onto ``out`` at the end, with ``demo_meta.json`` recording the parameters, counts and the
source box of every crop.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from collabprune.errors import DatasetError

#: Source photographs (file names in ``skimage/data``): the colour photographs that load without a
#: download. ``motorcycle_right.png`` is left out: it is a stereo view of ``motorcycle_left.png``,
#: so its regions would show the other view's pixels of another split.
SOURCES: tuple[str, ...] = (
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "chelsea.png",
    "coffee.png",
)
#: scikit-learn's sample photographs (``sklearn/datasets/images``), used when scikit-learn is installed.
SKLEARN_SOURCES: tuple[str, ...] = ("china.jpg", "flower.jpg")

#: The paired tasks the builder knows; ``restore`` is the demo's.
TASKS: tuple[str, ...] = ("restore", "colourise", "edges")
#: ``restore``: Gaussian blur sigma (pixels at a 128-pixel crop) and noise sd (in [0, 1] units).
RESTORE_BLUR_SIGMA = 1.5
RESTORE_NOISE_SD = 20.0 / 255.0

#: The photograph is cut into a GRID x GRID grid of blocks; the blocks (row, column) of each split.
GRID = 3
BLOCKS: dict[str, tuple[tuple[int, int], ...]] = {
    "train": ((0, 0), (0, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)),
    "val": ((0, 2),),
    "test": ((1, 1),),
}
SPLITS = tuple(BLOCKS)

META_NAME = "demo_meta.json"
_FORMAT = 4
#: Crop side as a fraction of the block's shorter side (uniform in this range).
_CROP_FRACTION = (0.6, 1.0)


def skimage_data_dir() -> Path:
    """The ``data`` folder of the installed scikit-image package (photos that ship with it)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def sklearn_images_dir() -> Path | None:
    """The sample-image folder of the installed scikit-learn, or None when it is not installed."""
    try:
        import sklearn
    except ImportError:
        return None
    return Path(sklearn.__file__).parent / "datasets" / "images"


def source_paths() -> list[Path]:
    """Paths of the demo's source photographs that this installation ships (scikit-image first)."""
    paths = [skimage_data_dir() / name for name in SOURCES]
    sk = sklearn_images_dir()
    if sk is not None:
        paths += [sk / name for name in SKLEARN_SOURCES]
    return paths


def _load_source(path: Path) -> Image.Image | None:
    """One shipped photograph as RGB, or None if this installation lacks it."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception:
        return None


def _edge_map(photo: Image.Image, size: int) -> Image.Image:
    """Canny edges of a ``size x size`` RGB crop: black edges on white, RGB."""
    from skimage.color import rgb2gray
    from skimage.feature import canny

    gray = rgb2gray(np.asarray(photo, dtype=np.float64) / 255.0)
    edges = canny(gray, sigma=max(1.0, 1.5 * size / 128))
    return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8)).convert("RGB")


def _grey(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """``colourise`` input: the crop's luminance (ITU-R 601-2, PIL's ``L``), as 3 equal channels."""
    return photo.convert("L").convert("RGB")


def _degrade(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """``restore`` input: Gaussian blur (sigma scaled with ``size``) plus seeded Gaussian noise."""
    from skimage.filters import gaussian

    img = np.asarray(photo, dtype=np.float64) / 255.0
    blurred = gaussian(img, sigma=RESTORE_BLUR_SIGMA * size / 128, channel_axis=-1)
    noisy = np.clip(blurred + rng.normal(0.0, RESTORE_NOISE_SD, blurred.shape), 0.0, 1.0)
    return Image.fromarray(np.round(noisy * 255).astype(np.uint8))


def _edges(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    return _edge_map(photo, size)


_INPUTS = {"colourise": _grey, "restore": _degrade, "edges": _edges}
_DESCRIPTIONS = {
    "colourise": "A = grey (luminance) copy of B, B = photo crop; aligned A|B PNG",
    "restore": f"A = B blurred (sigma {RESTORE_BLUR_SIGMA:g} px at 128 px) + noise sd {RESTORE_NOISE_SD * 255:g}/255, "
    "B = photo crop; aligned A|B PNG",
    "edges": "A = Canny edges (black on white), B = photo crop; aligned A|B PNG",
}


def make_input(task: str, photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """The input image A of a task for the target crop ``photo`` (``size x size`` RGB).

    :param task: one of :data:`TASKS`.
    :param rng: draws of the task's randomness (the ``restore`` noise).
    :raises DatasetError: unknown task.
    """
    if task not in _INPUTS:
        raise DatasetError(f"data.demo.task={task!r} is not a demo task", hint=f"choose one of {', '.join(TASKS)}")
    return _INPUTS[task](photo, size, rng)


def split_crops(split: str, crops_per_image: int) -> int:
    """Crops per photograph of a split: ``crops_per_image`` for train, half of it (at least 1)
    for val and test."""
    return crops_per_image if split == "train" else max(1, crops_per_image // 2)


def _block_box(photo: Image.Image, row: int, col: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of grid block (row, col) of ``photo``."""
    w, h = photo.size
    return (col * w // GRID, row * h // GRID, (col + 1) * w // GRID, (row + 1) * h // GRID)


def _crops(photo: Image.Image, name: str, split: str, n: int, size: int, seed: int) -> list[tuple[Image.Image, tuple[int, int, int, int]]]:
    """``n`` random square crops, each inside one block of ``split``, resized to ``size``.

    Seeded by ``(seed, name, split)``. :returns: ``(crop, (x0, y0, x1, y1))`` pairs, boxes in pixels.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(split.encode())])
    blocks = BLOCKS[split]
    out = []
    for _ in range(n):
        bx0, by0, bx1, by1 = _block_box(photo, *blocks[int(rng.integers(len(blocks)))])
        short = min(bx1 - bx0, by1 - by0)
        side = int(rng.integers(round(_CROP_FRACTION[0] * short), round(_CROP_FRACTION[1] * short) + 1))
        x = int(rng.integers(bx0, bx1 - side + 1))
        y = int(rng.integers(by0, by1 - side + 1))
        box = (x, y, x + side, y + side)
        out.append((photo.crop(box).resize((size, size), Image.LANCZOS), box))
    return out


def _params(size: int, crops_per_image: int, seed: int, task: str) -> dict[str, Any]:
    params: dict[str, Any] = {"format": _FORMAT, "size": int(size), "crops_per_image": int(crops_per_image),
                              "seed": int(seed), "task": task}
    if task == "restore":
        params["restore"] = {"blur_sigma": RESTORE_BLUR_SIGMA, "noise_sd": RESTORE_NOISE_SD}
    return params


def _read_meta(out: Path) -> dict | None:
    try:
        meta = json.loads((out / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def demo_is_built(out: Path, size: int = 128, crops_per_image: int = 24, seed: int = 0, task: str = "restore") -> bool:
    """Whether ``out`` holds a complete demo dataset built with these parameters.

    :param out: the dataset root.
    :param size: side of the A and B crops, pixels.
    :param crops_per_image: crops per source photograph.
    :param seed: the build seed.
    :param task: the paired task (:data:`TASKS`).
    :return: True if ``demo_meta.json`` matches the parameters and every split holds its recorded
        number of PNG files.
    """
    out = Path(out)
    meta = _read_meta(out)
    if meta is None or meta.get("params") != _params(size, crops_per_image, seed, task):
        return False
    counts = meta.get("counts", {})
    return set(counts) == set(SPLITS) and all(
        (out / s).is_dir() and len(list((out / s).glob("*.png"))) == counts[s] for s in SPLITS
    )


def _write(tmp: Path, size: int, crops_per_image: int, seed: int, task: str) -> dict:
    """Write all splits and the meta file into ``tmp``; return the meta."""
    make_input(task, Image.new("RGB", (size, size)), size, np.random.default_rng(0))  # DatasetError first
    photos = {path.stem: _load_source(path) for path in source_paths()}
    photos = {stem: photo for stem, photo in photos.items() if photo is not None}
    if not photos:
        raise DatasetError(
            f"{skimage_data_dir()}: none of the demo's photographs {list(SOURCES)} ships with this scikit-image",
            hint="install scikit-image>=0.19, or point data.root at your own dataset",
        )
    counts: dict[str, int] = {}
    boxes: dict[str, list[list]] = {}
    for split in SPLITS:
        (tmp / split).mkdir()
        counts[split], boxes[split] = 0, []
        for stem, photo in photos.items():
            rng = np.random.default_rng([seed, zlib.crc32(stem.encode()), zlib.crc32(split.encode()), 1])
            for k, (crop, box) in enumerate(_crops(photo, stem, split, split_crops(split, crops_per_image), size, seed)):
                pair = Image.new("RGB", (2 * size, size))
                pair.paste(make_input(task, crop, size, rng), (0, 0))
                pair.paste(crop, (size, 0))
                pair.save(tmp / split / f"{stem}_{k:03d}.png", format="PNG")
                boxes[split].append([stem, *box])
                counts[split] += 1
    import skimage

    meta = {
        "params": _params(size, crops_per_image, seed, task),
        "counts": counts,
        "sources": sorted(photos),
        "grid": GRID,
        "blocks": {k: [list(b) for b in v] for k, v in BLOCKS.items()},
        "boxes": boxes,
        "task": task,
        "description": _DESCRIPTIONS[task],
        "skimage_version": skimage.__version__,
    }
    (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def build_demo_dataset(
    out: Path, size: int = 128, crops_per_image: int = 24, seed: int = 0, task: str = "restore"
) -> dict[str, int]:
    """Build the demo dataset of ``task`` under ``out/{train,val,test}`` (or reuse a built one).

    Photographs: :func:`source_paths`; each gives ``crops_per_image`` train pairs from its train
    blocks and ``crops_per_image // 2`` (at least 1) val and test pairs from its val and test blocks.

    :param out: the dataset root to create; its parent is created if needed.
    :param size: side of the A and B crops, pixels (each file is ``2*size x size``).
    :param crops_per_image: random train crops per source photograph.
    :param seed: seed of the crop positions and sizes (and of the ``restore`` noise).
    :param task: the paired task, one of :data:`TASKS`.
    :return: number of pairs per split, e.g. ``{"train": 240, "val": 120, "test": 120}``.
    :raises DatasetError: if ``out`` exists and is neither empty nor a demo dataset (it is never
        overwritten then), no demo photograph ships with the scikit-image install, or the task is
        unknown.
    """
    out = Path(out)
    if demo_is_built(out, size, crops_per_image, seed, task):
        return dict(_read_meta(out)["counts"])  # type: ignore[index]
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META_NAME).is_file())):
        raise DatasetError(
            f"{out}: exists and is not a demo dataset; refusing to overwrite it",
            hint="choose another data.root or remove that folder",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building.", dir=out.parent))
    old: Path | None = None
    try:
        meta = _write(tmp, size, crops_per_image, seed, task)
        if out.exists():  # empty, or a demo built with other parameters / incomplete: replace it
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "d")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "d").exists() and not out.exists():
            os.replace(old / "d", out)  # put the previous dataset back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dict(meta["counts"])
