"""The demo dataset: edges -> photo, built from real photographs that ship inside scikit-image.

Each source photograph (read straight from the ``skimage/data`` folder of the installed package, so
nothing is ever downloaded) gives ``crops_per_image`` random square crops, resized to ``size``. For
each crop, A is its Canny edge map (black edges on white, 3 channels) and B is the photo crop; the
pair is written as one aligned ``A|B`` PNG, so the real :class:`~collabprune.data.AlignedDataset`
reads it.

Splits never share pixels: each source photograph belongs to exactly one split (:data:`SPLITS`).
The build is deterministic for a seed (same bytes for the same scikit-image/Pillow versions) and
atomic: it is written into a temporary folder beside ``out`` and renamed onto ``out`` at the end,
with ``demo_meta.json`` recording the parameters, counts and source assignment.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from collabprune.errors import DatasetError

#: Source photographs per split (file names in ``skimage/data``). A source is in exactly one split.
#: The two motorcycle files are a stereo pair of one scene, so they share a split.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "retina.jpg",
    ),
    "val": ("chelsea.png",),
    "test": ("coffee.png",),
}

META_NAME = "demo_meta.json"
_FORMAT = 1
#: Crop side as a fraction of the photo's shorter side (uniform in this range).
_CROP_FRACTION = (0.35, 0.8)


def skimage_data_dir() -> Path:
    """The ``data`` folder of the installed scikit-image package (photos that ship with it)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def _load_source(name: str) -> Image.Image | None:
    """One shipped photograph as RGB, or None if this scikit-image install lacks it."""
    path = skimage_data_dir() / name
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


def _crops(photo: Image.Image, name: str, n: int, size: int, seed: int) -> list[Image.Image]:
    """``n`` random square crops of ``photo`` resized to ``size``, seeded by ``(seed, name)``."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    w, h = photo.size
    short = min(w, h)
    out = []
    for _ in range(n):
        side = int(rng.integers(round(_CROP_FRACTION[0] * short), round(_CROP_FRACTION[1] * short) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append(photo.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS))
    return out


def _params(size: int, crops_per_image: int, seed: int) -> dict[str, int]:
    return {"format": _FORMAT, "size": int(size), "crops_per_image": int(crops_per_image), "seed": int(seed)}


def _read_meta(out: Path) -> dict | None:
    try:
        meta = json.loads((out / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def demo_is_built(out: Path, size: int = 128, crops_per_image: int = 24, seed: int = 0) -> bool:
    """Whether ``out`` holds a complete demo dataset built with these parameters.

    :param out: the dataset root.
    :param size: side of the A and B crops, pixels.
    :param crops_per_image: crops per source photograph.
    :param seed: the build seed.
    :return: True if ``demo_meta.json`` matches the parameters and every split holds its recorded
        number of PNG files.
    """
    out = Path(out)
    meta = _read_meta(out)
    if meta is None or meta.get("params") != _params(size, crops_per_image, seed):
        return False
    counts = meta.get("counts", {})
    return set(counts) == set(SPLITS) and all(
        (out / s).is_dir() and len(list((out / s).glob("*.png"))) == counts[s] for s in SPLITS
    )


def _write(tmp: Path, size: int, crops_per_image: int, seed: int) -> dict:
    """Write all splits and the meta file into ``tmp``; return the meta."""
    counts: dict[str, int] = {}
    sources: dict[str, list[str]] = {}
    for split, names in SPLITS.items():
        (tmp / split).mkdir()
        counts[split], sources[split] = 0, []
        for name in names:
            photo = _load_source(name)
            if photo is None:
                continue
            stem = Path(name).stem
            sources[split].append(stem)
            for k, crop in enumerate(_crops(photo, name, crops_per_image, size, seed)):
                pair = Image.new("RGB", (2 * size, size))
                pair.paste(_edge_map(crop, size), (0, 0))
                pair.paste(crop, (size, 0))
                pair.save(tmp / split / f"{stem}_{k:03d}.png", format="PNG")
                counts[split] += 1
        if counts[split] == 0:
            raise DatasetError(
                f"{skimage_data_dir()}: none of the demo's {split} photographs {list(names)} "
                "ships with this scikit-image",
                hint="install scikit-image>=0.19, or point data.root at your own dataset",
            )
    import skimage

    meta = {
        "params": _params(size, crops_per_image, seed),
        "counts": counts,
        "sources": sources,
        "task": "A = Canny edges (black on white), B = photo crop; aligned A|B PNG",
        "skimage_version": skimage.__version__,
    }
    (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def build_demo_dataset(out: Path, size: int = 128, crops_per_image: int = 24, seed: int = 0) -> dict[str, int]:
    """Build the edges -> photo demo dataset under ``out/{train,val,test}`` (or reuse a built one).

    Train photos: astronaut, rocket, motorcycle (left and right), hubble_deep_field, ihc, retina;
    val: chelsea; test: coffee (see :data:`SPLITS`). Each gives ``crops_per_image`` pairs.

    :param out: the dataset root to create; its parent is created if needed.
    :param size: side of the A and B crops, pixels (each file is ``2*size x size``).
    :param crops_per_image: random crops per source photograph.
    :param seed: seed of the crop positions and sizes.
    :return: number of pairs per split, e.g. ``{"train": 168, "val": 24, "test": 24}``.
    :raises DatasetError: if ``out`` exists and is neither empty nor a demo dataset (it is never
        overwritten then), or a split's photographs are missing from the scikit-image install.
    """
    out = Path(out)
    if demo_is_built(out, size, crops_per_image, seed):
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
        meta = _write(tmp, size, crops_per_image, seed)
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
