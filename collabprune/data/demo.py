"""The demo datasets: a paired or an unpaired task built from real photographs that ship inside
installed packages.

Each source photograph (read straight from the ``skimage/data`` folder of the installed
scikit-image, plus scikit-learn's two sample images when scikit-learn is installed, so nothing is
ever downloaded) gives random square crops, resized to ``size``. For the paired tasks
(:data:`PAIRED_TASKS`) B is the photo crop and A is made from it:

- ``restore`` (the default): A is the crop blurred (Gaussian, sigma 1.5 px at 128 px) plus Gaussian
  noise (sd 20/255), B the clean crop;
- ``colourise``: A is the crop's luminance (ITU-R 601 grey, 3 equal channels);
- ``edges``: A is the crop's Canny edge map (black edges on white).

The pair is written as one aligned ``A|B`` PNG in ``{split}/``, so the real
:class:`~collabprune.data.AlignedDataset` reads it. Which task the pix2pix demo uses was chosen by
measurement (README, "The demo task").

The unpaired tasks (:data:`UNPAIRED_TASKS`) are written in upstream's unaligned layout, ``{split}A/``
and ``{split}B/``, for :class:`~collabprune.data.UnalignedDataset` and CycleGAN:

- ``cartoon``: A images are plain photo crops; B images are cartoonised photo crops
  (:func:`cartoonise`: edge-preserving total-variation smoothing, per-channel colour quantisation to
  :data:`CARTOON_LEVELS` levels, black Canny edge lines). A and B crops are drawn independently
  (their own seeded positions and sizes) from the same photographs and the same split blocks, so the
  two domains share their content distribution but no file of one is the pair of a file of the other
  (equal file names in ``{split}A`` and ``{split}B`` mean nothing). The mapping A -> B needs
  spatial context (smoothing, where the lines go) and a nonlinearity (quantisation), not a per-pixel
  colour map.
- ``sketch``: A images are plain photo crops; B images are pencil sketches of independently drawn
  photo crops (:func:`pencil_sketch`: the colour dodge of the grey crop with its Gaussian-blurred
  inverse, ``grey / (1 - blur(1 - grey))`` clipped to [0, 1], sigma :data:`SKETCH_SIGMA` px at 128 px,
  3 equal channels). Same layout, seeding and blocks as ``cartoon``. Easier to learn than ``cartoon``
  in a CPU budget (a grey target, no palette to invent), yet not a per-pixel map: a pixel's value is
  its ratio to the mean of its neighbourhood (about ``3 * sigma`` px), so flat regions turn white
  whatever their tone and only the dark side of edges is drawn.

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

from collabprune.config import PAIRED_TASKS, UNPAIRED_TASKS
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

# PAIRED_TASKS (aligned ``A|B`` files; ``restore`` is the pix2pix demo's) and UNPAIRED_TASKS (unaligned
# ``{split}A`` / ``{split}B`` folders; ``sketch`` is the CycleGAN demo's, ``cartoon`` the harder
# alternative) are the config's vocabulary (``data.demo.task``), imported above.
#: Every task the builder knows (``data.demo.task``).
TASKS: tuple[str, ...] = PAIRED_TASKS + UNPAIRED_TASKS
#: ``restore``: Gaussian blur sigma (pixels at a 128-pixel crop) and noise sd (in [0, 1] units).
RESTORE_BLUR_SIGMA = 1.5
RESTORE_NOISE_SD = 20.0 / 255.0
#: ``cartoon``: weight of the total-variation smoothing (skimage ``denoise_tv_chambolle``, image in
#: [0, 1]), colour levels per channel, the Canny sigma (pixels at a 128-pixel crop; at least 1) and the
#: line width (pixels per 64 pixels of crop side, rounded; at least 1).
CARTOON_TV_WEIGHT = 0.1
CARTOON_LEVELS = 5
CARTOON_EDGE_SIGMA = 1.5
CARTOON_LINE_WIDTH = 1.0
#: ``sketch``: sigma of the Gaussian blur of the inverted grey image (pixels at a 128-pixel crop), and the
#: floor of the colour-dodge denominator (in [0, 1] units; keeps black regions black, not 0/0).
SKETCH_SIGMA = 3.0
SKETCH_EPS = 1.0 / 255.0

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


def cartoonise(photo: Image.Image, size: int) -> Image.Image:
    """A cartoonised copy of a ``size x size`` RGB crop (the B domain of ``cartoon``).

    Edge-preserving smoothing (total variation, weight :data:`CARTOON_TV_WEIGHT`), each channel
    quantised to :data:`CARTOON_LEVELS` evenly spaced levels in [0, 1], then the Canny edges of the
    smoothed image's luminance (sigma :data:`CARTOON_EDGE_SIGMA` px scaled by ``size / 128``, at
    least 1 px) drawn black, :data:`CARTOON_LINE_WIDTH` px wide per 64 px of ``size`` (so the lines
    scale with the crop: 1 px at 64-95 px, 2 px at 96-159 px). Deterministic.

    :param photo: the crop, RGB.
    :param size: its side, pixels (scales the edge detector).
    :returns: the cartoonised crop, RGB, same size.
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny
    from skimage.restoration import denoise_tv_chambolle

    img = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
    smooth = denoise_tv_chambolle(img, weight=CARTOON_TV_WEIGHT, channel_axis=-1)
    steps = CARTOON_LEVELS - 1
    flat = np.round(np.clip(smooth, 0.0, 1.0) * steps) / steps
    edges = canny(rgb2gray(smooth), sigma=max(1.0, CARTOON_EDGE_SIGMA * size / 128))
    width = max(1, int(CARTOON_LINE_WIDTH * size / 64 + 0.5))
    if width > 1:
        from scipy.ndimage import binary_dilation

        edges = binary_dilation(edges, structure=np.ones((width, width), dtype=bool))
    flat[edges] = 0.0
    return Image.fromarray(np.round(flat * 255).astype(np.uint8))


def pencil_sketch(photo: Image.Image, size: int) -> Image.Image:
    """A pencil sketch of a ``size x size`` RGB crop (the B domain of ``sketch``).

    The classic "colour dodge" pencil-sketch recipe (as in GIMP's / Photoshop's Colour Dodge blend
    mode applied to a grey layer and its blurred inverted copy): ``g`` = the crop's luminance in [0, 1]
    (ITU-R 601-2 weights 0.299, 0.587, 0.114), ``b`` = Gaussian blur of ``1 - g`` with sigma
    :data:`SKETCH_SIGMA` px scaled by ``size / 128`` (scipy ``gaussian_filter``, reflected borders), and
    ``sketch = clip(g / max(1 - b, SKETCH_EPS), 0, 1)``. Since ``1 - b`` is the local mean of ``g``, a
    pixel is white where it is at least as bright as its neighbourhood and dark in proportion to how much
    darker it is (outlines and shading along edges, flat regions white): the output at a pixel depends
    on a neighbourhood of about ``3 * sigma`` px, not on the pixel alone. Returned as 3 equal channels.
    Deterministic.

    :param photo: the crop, RGB.
    :param size: its side, pixels (scales the blur).
    :returns: the sketch, RGB (3 equal channels), same size.
    """
    from scipy.ndimage import gaussian_filter

    rgb = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    blur = gaussian_filter(1.0 - grey, sigma=SKETCH_SIGMA * size / 128, mode="reflect")
    sketch = np.clip(grey / np.maximum(1.0 - blur, SKETCH_EPS), 0.0, 1.0)
    return Image.fromarray(np.round(sketch * 255).astype(np.uint8)).convert("RGB")


_INPUTS = {"colourise": _grey, "restore": _degrade, "edges": _edges}
_DESCRIPTIONS = {
    "colourise": "A = grey (luminance) copy of B, B = photo crop; aligned A|B PNG",
    "restore": f"A = B blurred (sigma {RESTORE_BLUR_SIGMA:g} px at 128 px) + noise sd {RESTORE_NOISE_SD * 255:g}/255, "
    "B = photo crop; aligned A|B PNG",
    "edges": "A = Canny edges (black on white), B = photo crop; aligned A|B PNG",
    "cartoon": f"A = photo crop, B = an independently drawn photo crop cartoonised (TV smoothing weight "
    f"{CARTOON_TV_WEIGHT:g}, {CARTOON_LEVELS} levels per channel, black Canny edges {CARTOON_LINE_WIDTH:g} px "
    "wide per 64 px); unpaired, "
    "{split}A / {split}B folders",
    "sketch": f"A = photo crop, B = an independently drawn photo crop as a pencil sketch (grey / (1 - Gaussian "
    f"blur of the inverted grey, sigma {SKETCH_SIGMA:g} px at 128 px), clipped to [0, 1], 3 equal channels); "
    "unpaired, {split}A / {split}B folders",
}


def check_task(task: str) -> None:
    """:raises DatasetError: ``task`` is not one of :data:`TASKS`."""
    if task not in TASKS:
        raise DatasetError(f"data.demo.task={task!r} is not a demo task", hint=f"choose one of {', '.join(TASKS)}")


def task_folders(task: str) -> tuple[str, ...]:
    """The folders a task writes under the dataset root: ``train, val, test`` (paired) or
    ``trainA, trainB, valA, valB, testA, testB`` (unpaired).

    :raises DatasetError: unknown task.
    """
    check_task(task)
    if task in PAIRED_TASKS:
        return SPLITS
    return tuple(f"{split}{domain}" for split in SPLITS for domain in "AB")


def make_input(task: str, photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """The input image A of a task for the target crop ``photo`` (``size x size`` RGB).

    :param task: one of :data:`PAIRED_TASKS`.
    :param rng: draws of the task's randomness (the ``restore`` noise).
    :raises DatasetError: unknown task, or an unpaired one (its B images are not made from A).
    """
    check_task(task)
    if task not in _INPUTS:
        raise DatasetError(f"data.demo.task={task!r} is unpaired: it has no input made from the target",
                           hint=f"paired tasks: {', '.join(PAIRED_TASKS)}")
    return _INPUTS[task](photo, size, rng)


def split_crops(split: str, crops_per_image: int) -> int:
    """Crops per photograph of a split: ``crops_per_image`` for train, half of it (at least 1)
    for val and test."""
    return crops_per_image if split == "train" else max(1, crops_per_image // 2)


def _block_box(photo: Image.Image, row: int, col: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of grid block (row, col) of ``photo``."""
    w, h = photo.size
    return (col * w // GRID, row * h // GRID, (col + 1) * w // GRID, (row + 1) * h // GRID)


def _crops(
    photo: Image.Image, name: str, split: str, n: int, size: int, seed: int, stream: str = ""
) -> list[tuple[Image.Image, tuple[int, int, int, int]]]:
    """``n`` random square crops, each inside one block of ``split``, resized to ``size``.

    Seeded by ``(seed, name, split)``, plus ``stream`` when given (the unpaired task draws its A and
    B crops from the streams ``"A"`` and ``"B"``, so they are independent).
    :returns: ``(crop, (x0, y0, x1, y1))`` pairs, boxes in pixels.
    """
    key = [seed, zlib.crc32(name.encode()), zlib.crc32(split.encode())]
    rng = np.random.default_rng(key + ([zlib.crc32(stream.encode())] if stream else []))
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
    if task == "cartoon":
        params["cartoon"] = {"tv_weight": CARTOON_TV_WEIGHT, "levels": CARTOON_LEVELS, "edge_sigma": CARTOON_EDGE_SIGMA,
                             "line_width": CARTOON_LINE_WIDTH}
    if task == "sketch":
        params["sketch"] = {"sigma": SKETCH_SIGMA, "eps": SKETCH_EPS}
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
    :param task: the task (:data:`TASKS`).
    :return: True if ``demo_meta.json`` matches the parameters and every folder of the task's layout
        (:func:`task_folders`) holds its recorded number of PNG files.
    """
    out = Path(out)
    meta = _read_meta(out)
    if task not in TASKS or meta is None or meta.get("params") != _params(size, crops_per_image, seed, task):
        return False
    counts = meta.get("counts", {})
    folders = task_folders(task)
    return set(counts) == set(folders) and all(
        (out / f).is_dir() and len(list((out / f).glob("*.png"))) == counts[f] for f in folders
    )


def _load_photos() -> dict[str, Image.Image]:
    """The shipped source photographs by file stem.

    :raises DatasetError: none of them ships with this installation.
    """
    photos = {path.stem: _load_source(path) for path in source_paths()}
    photos = {stem: photo for stem, photo in photos.items() if photo is not None}
    if not photos:
        raise DatasetError(
            f"{skimage_data_dir()}: none of the demo's photographs {list(SOURCES)} ships with this scikit-image",
            hint="install scikit-image>=0.19, or point data.root at your own dataset",
        )
    return photos


def _write_paired(tmp: Path, photos: dict[str, Image.Image], size: int, crops_per_image: int, seed: int,
                  task: str, counts: dict[str, int], boxes: dict[str, list[list]]) -> None:
    """Write the aligned ``A|B`` files of every split into ``tmp/{split}``; fill ``counts`` and ``boxes``."""
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


def _write_unpaired(tmp: Path, photos: dict[str, Image.Image], size: int, crops_per_image: int, seed: int,
                    task: str, counts: dict[str, int], boxes: dict[str, list[list]]) -> None:
    """Write an unpaired task's images into ``tmp/{split}A`` (photo crops) and ``tmp/{split}B``
    (crops of independently drawn boxes, cartoonised for ``cartoon``, pencil-sketched for ``sketch``);
    fill ``counts`` and ``boxes`` per folder."""
    make_b = _B_IMAGES[task]
    for split in SPLITS:
        for domain in "AB":
            folder = f"{split}{domain}"
            (tmp / folder).mkdir()
            counts[folder], boxes[folder] = 0, []
            for stem, photo in photos.items():
                crops = _crops(photo, stem, split, split_crops(split, crops_per_image), size, seed, stream=domain)
                for k, (crop, box) in enumerate(crops):
                    image = crop if domain == "A" else make_b(crop, size)
                    image.save(tmp / folder / f"{stem}_{k:03d}.png", format="PNG")
                    boxes[folder].append([stem, *box])
                    counts[folder] += 1


#: The B-image function of each unpaired task (A images are the plain crops).
_B_IMAGES = {"cartoon": cartoonise, "sketch": pencil_sketch}


def _write(tmp: Path, size: int, crops_per_image: int, seed: int, task: str) -> dict:
    """Write all folders of the task's layout and the meta file into ``tmp``; return the meta."""
    check_task(task)  # DatasetError before any work
    photos = _load_photos()
    counts: dict[str, int] = {}
    boxes: dict[str, list[list]] = {}
    writer = _write_paired if task in PAIRED_TASKS else _write_unpaired
    writer(tmp, photos, size, crops_per_image, seed, task, counts, boxes)
    import skimage

    meta = {
        "params": _params(size, crops_per_image, seed, task),
        "counts": counts,
        "sources": sorted(photos),
        "grid": GRID,
        "blocks": {k: [list(b) for b in v] for k, v in BLOCKS.items()},
        "boxes": boxes,
        "task": task,
        "layout": "aligned" if task in PAIRED_TASKS else "unaligned",
        "description": _DESCRIPTIONS[task],
        "skimage_version": skimage.__version__,
    }
    (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def build_demo_dataset(
    out: Path, size: int = 128, crops_per_image: int = 24, seed: int = 0, task: str = "restore"
) -> dict[str, int]:
    """Build the demo dataset of ``task`` (or reuse a built one): ``out/{train,val,test}`` for a
    paired task, ``out/{train,val,test}{A,B}`` for an unpaired one.

    Photographs: :func:`source_paths`; each gives ``crops_per_image`` train crops from its train
    blocks and ``crops_per_image // 2`` (at least 1) val and test crops from its val and test blocks
    (per domain, for an unpaired task).

    :param out: the dataset root to create; its parent is created if needed.
    :param size: side of the A and B crops, pixels (an aligned file is ``2*size x size``).
    :param crops_per_image: random train crops per source photograph.
    :param seed: seed of the crop positions and sizes (and of the ``restore`` noise).
    :param task: one of :data:`TASKS`.
    :return: number of files per folder of the layout (:func:`task_folders`), e.g.
        ``{"train": 240, "val": 120, "test": 120}`` (paired) or ``{"trainA": 240, "trainB": 240, ...}``.
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
