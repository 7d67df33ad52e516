"""Tests of collabprune.data: aligned/unaligned datasets, splits, and the demo dataset builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from collabprune.config import DataConfig
from collabprune.data import (
    AlignedDataset,
    UnalignedDataset,
    build_demo_dataset,
    demo_is_built,
    heldout_split,
    make_dataset,
    reward_split,
    train_split,
)
from collabprune.data.demo import META_NAME, source_paths
from collabprune.errors import DatasetError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _cfg(root: Path, **kw: object) -> DataConfig:
    base = dict(root=root, load_size=36, crop_size=32)
    base.update(kw)
    return DataConfig(**base)


def _save_pair(path: Path, left: Image.Image, right: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = left.size
    ab = Image.new("RGB", (2 * w, h))
    ab.paste(left, (0, 0))
    ab.paste(right, (w, 0))
    ab.save(path)


def _noise(seed: int, w: int = 40, h: int = 40) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.fixture()
def aligned_root(tmp_path: Path) -> Path:
    for i in range(4):
        _save_pair(tmp_path / "train" / f"{i}.png", Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE))
    return tmp_path


def test_aligned_shapes_range_and_direction(aligned_root: Path) -> None:
    ds = AlignedDataset(aligned_root, "train", _cfg(aligned_root))
    assert len(ds) == 4
    item = ds[0]
    assert item["A"].shape == (3, 32, 32) and item["B"].shape == (3, 32, 32)
    assert item["A"].dtype == torch.float32
    for t in (item["A"], item["B"]):
        assert t.min() >= -1.0 and t.max() <= 1.0
    assert torch.allclose(item["A"][0], torch.ones(32, 32), atol=0.02)  # A = red = left half
    assert torch.allclose(item["B"][2], torch.ones(32, 32), atol=0.02)  # B = blue = right half
    assert item["A_paths"].endswith("0.png") and item["B_paths"] == item["A_paths"]

    swapped = AlignedDataset(aligned_root, "train", _cfg(aligned_root, direction="BtoA"))[0]
    assert torch.allclose(swapped["A"][2], torch.ones(32, 32), atol=0.02)
    assert torch.allclose(swapped["B"][0], torch.ones(32, 32), atol=0.02)

    gray = AlignedDataset(aligned_root, "train", _cfg(aligned_root, input_nc=1))[0]
    assert gray["A"].shape == (1, 32, 32) and gray["B"].shape == (3, 32, 32)


@pytest.mark.parametrize("preprocess", ["resize_and_crop", "crop"])
def test_aligned_same_crop_and_flip_for_a_and_b(tmp_path: Path, preprocess: str) -> None:
    img = _noise(1)
    _save_pair(tmp_path / "train" / "x.png", img, img)
    ds = AlignedDataset(tmp_path, "train", _cfg(tmp_path, preprocess=preprocess), seed=3)
    outs = []
    for _ in range(12):
        item = ds[0]
        assert torch.equal(item["A"], item["B"])
        outs.append(item["A"])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # the crop/flip really is random


def test_aligned_eval_is_deterministic_centre_crop(tmp_path: Path) -> None:
    img = _noise(2)
    _save_pair(tmp_path / "val" / "x.png", img, img)
    cfg = _cfg(tmp_path, preprocess="crop")
    a = AlignedDataset(tmp_path, "val", cfg, train=False, seed=0)[0]["A"]
    b = AlignedDataset(tmp_path, "val", cfg, train=False, seed=99)[0]["A"]
    assert torch.equal(a, b)
    centre = torch.from_numpy(np.array(img)[4:36, 4:36]).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(a, centre, atol=1e-5)


def test_preprocess_none_makes_multiple_of_4(tmp_path: Path) -> None:
    _save_pair(tmp_path / "test" / "x.png", _noise(0, 30, 22), _noise(1, 30, 22))
    item = AlignedDataset(tmp_path, "test", _cfg(tmp_path, preprocess="none"), train=False)[0]
    assert item["A"].shape == (3, 24, 32) and item["B"].shape == (3, 24, 32)


def test_unaligned_dataset(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / "trainA").mkdir(exist_ok=True)
        Image.new("RGB", (40, 40), RED).save(tmp_path / "trainA" / f"a{i}.png")
    for i in range(2):
        (tmp_path / "trainB").mkdir(exist_ok=True)
        Image.new("RGB", (40, 40), BLUE).save(tmp_path / "trainB" / f"b{i}.jpg")
    cfg = _cfg(tmp_path, dataset_mode="unaligned")
    ds = make_dataset(cfg, "train", train=False)
    assert isinstance(ds, UnalignedDataset) and len(ds) == 3
    item = ds[2]
    assert item["A"].shape == (3, 32, 32) and item["B"].shape == (3, 32, 32)
    assert item["A_paths"].endswith("a2.png") and item["B_paths"].endswith("b0.jpg")
    assert torch.allclose(item["A"][0], torch.ones(32, 32), atol=0.02)

    rand = UnalignedDataset(tmp_path, "train", cfg, train=True, seed=5)
    picks = [Path(rand[i % 3]["B_paths"]).name for i in range(20)]
    assert set(picks) == {"b0.jpg", "b1.jpg"}
    again = UnalignedDataset(tmp_path, "train", cfg, train=True, seed=5)
    assert picks == [Path(again[i % 3]["B_paths"]).name for i in range(20)]

    cfg_ba = _cfg(tmp_path, dataset_mode="unaligned", direction="BtoA")
    swapped = UnalignedDataset(tmp_path, "train", cfg_ba, train=False)
    assert len(swapped) == 3 and "trainB" in swapped[0]["A_paths"] and "trainA" in swapped[0]["B_paths"]

    with pytest.raises(DatasetError, match="valA"):
        UnalignedDataset(tmp_path, "val", cfg)


def test_unreadable_image_error_names_path(aligned_root: Path) -> None:
    bad = aligned_root / "train" / "9_broken.png"
    bad.write_bytes(b"this is not a png")
    ds = AlignedDataset(aligned_root, "train", _cfg(aligned_root))
    idx = [Path(p).name for p in ds.paths].index("9_broken.png")
    with pytest.raises(DatasetError, match="not a readable image") as err:
        ds[idx]
    assert str(bad) in str(err.value)


def test_odd_width_error_names_path(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    path = tmp_path / "train" / "odd.png"
    Image.new("RGB", (33, 16)).save(path)
    with pytest.raises(DatasetError, match="33x16") as err:
        AlignedDataset(tmp_path, "train", _cfg(tmp_path))[0]
    assert str(path) in str(err.value)


def test_missing_and_empty_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as err:
        AlignedDataset(tmp_path, "train", _cfg(tmp_path))
    assert str(tmp_path / "train") in str(err.value)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="holds no image") as err:
        AlignedDataset(tmp_path, "train", _cfg(tmp_path))
    assert str(tmp_path / "train") in str(err.value)


def test_bad_channel_count(aligned_root: Path) -> None:
    with pytest.raises(DatasetError, match="input_nc=4"):
        AlignedDataset(aligned_root, "train", _cfg(aligned_root, input_nc=4))


def test_heldout_split_disjoint_and_deterministic() -> None:
    data = list(range(50))
    rest, held = heldout_split(data, 0.1, seed=7)  # type: ignore[arg-type]
    assert len(held) == 5 and len(rest) == 45
    assert set(held.indices).isdisjoint(rest.indices)
    assert set(held.indices) | set(rest.indices) == set(range(50))
    rest2, held2 = heldout_split(data, 0.1, seed=7)  # type: ignore[arg-type]
    assert held.indices == held2.indices and rest.indices == rest2.indices
    assert heldout_split(data, 0.1, seed=8)[1].indices != held.indices  # type: ignore[arg-type]
    assert len(heldout_split(list(range(3)), 0.01, seed=0)[1]) == 1  # type: ignore[arg-type]
    with pytest.raises(DatasetError):
        heldout_split([0], 0.5, seed=0)  # type: ignore[arg-type]


def test_reward_split_uses_val_else_heldout_train(aligned_root: Path) -> None:
    cfg = _cfg(aligned_root, heldout_fraction=0.25)
    held = reward_split(cfg)
    rest = train_split(cfg)
    assert len(held) == 1 and len(rest) == 3
    assert set(held.indices).isdisjoint(rest.indices)  # type: ignore[attr-defined]
    assert held.dataset.train is False and held.dataset.phase == "train"  # type: ignore[attr-defined]

    img = _noise(3)
    _save_pair(aligned_root / "val" / "v.png", img, img)
    _save_pair(aligned_root / "test" / "t.png", img, img)
    val = reward_split(cfg)
    assert isinstance(val, AlignedDataset) and val.phase == "val" and not val.train
    assert len(train_split(cfg)) == 4


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_dataset_build(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "one" / "demo", tmp_path / "two" / "demo"
    counts = build_demo_dataset(out1, size=64, crops_per_image=4, seed=3, task="colourise")
    n_photos = len([p for p in source_paths() if p.is_file()])
    assert n_photos == 10  # 8 scikit-image photographs + scikit-learn's china and flower
    assert counts == {"train": 4 * n_photos, "val": 2 * n_photos, "test": 2 * n_photos}  # val/test: half each
    assert build_demo_dataset(out2, size=64, crops_per_image=4, seed=3, task="colourise") == counts
    assert _files(out1) == _files(out2)  # deterministic: same bytes
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["demo"]  # no temp folder left
    assert demo_is_built(out1, 64, 4, 3, "colourise") and not demo_is_built(out1, 64, 3, 3, "colourise")
    assert not demo_is_built(out1, 64, 4, 3)  # the default task is restore

    meta = json.loads((out1 / META_NAME).read_text())
    boxes = meta["boxes"]  # [photo, x0, y0, x1, y1] of every crop, pixels of its source photo
    assert {s: len(v) for s, v in boxes.items()} == counts
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        for n1, *b1 in boxes[s1]:
            for n2, *b2 in boxes[s2]:
                overlap = n1 == n2 and b1[0] < b2[2] and b2[0] < b1[2] and b1[1] < b2[3] and b2[1] < b1[3]
                assert not overlap, (s1, n1, b1, s2, b2)  # no pixel of a photograph in two splits
    for split in counts:  # file names carry their source photo
        assert {p.name.rsplit("_", 1)[0] for p in (out1 / split).glob("*.png")} == {b[0] for b in boxes[split]}

    cfg = DataConfig(root=out1, load_size=64, crop_size=64)
    train = AlignedDataset(out1, "train", cfg, train=False)
    test = AlignedDataset(out1, "test", cfg, train=False)
    assert len(train) == counts["train"] and len(test) == counts["test"]
    item = test[0]
    assert item["A"].shape == (3, 64, 64) and item["B"].shape == (3, 64, 64)
    assert item["A"].min() >= -1 and item["A"].max() <= 1
    # colourise: A is the grey (luminance) copy of B, so its three channels are equal
    assert torch.equal(item["A"][0], item["A"][1]) and torch.equal(item["A"][1], item["A"][2])
    grey = 0.299 * item["B"][0] + 0.587 * item["B"][1] + 0.114 * item["B"][2]
    assert (item["A"][0] - grey).abs().mean() < 0.02 and not torch.equal(item["B"][0], item["B"][1])
    train_b = torch.stack([train[i]["B"] for i in range(len(train))])
    for i in range(len(test)):
        assert (train_b - test[i]["B"]).abs().flatten(1).mean(1).min() > 0.05

    # reuse without rebuilding; rebuild with other parameters replaces it
    mtime = (out1 / META_NAME).stat().st_mtime_ns
    assert build_demo_dataset(out1, size=64, crops_per_image=4, seed=3, task="colourise") == counts
    assert (out1 / META_NAME).stat().st_mtime_ns == mtime
    assert build_demo_dataset(out1, size=64, crops_per_image=8, seed=3, task="colourise")["val"] == 4 * n_photos
    assert len(list((out1 / "val").glob("*.png"))) == 4 * n_photos


@pytest.mark.parametrize("task", ["restore", "edges"])  # colourise: test_demo_dataset_build
def test_demo_other_tasks(tmp_path: Path, task: str) -> None:
    counts = build_demo_dataset(tmp_path / task, size=64, crops_per_image=1, seed=0, task=task)
    cfg = DataConfig(root=tmp_path / task, load_size=64, crop_size=64)
    item = AlignedDataset(tmp_path / task, "test", cfg, train=False)[0]
    assert json.loads((tmp_path / task / META_NAME).read_text())["task"] == task and counts["test"] == 10
    if task == "edges":  # a binary edge map with some edges
        assert set(torch.unique(item["A"]).tolist()) == {-1.0, 1.0}
    else:  # A = blur(B) + N(0, sd^2): the residual against B blurred the same way is the noise
        from skimage.filters import gaussian

        from collabprune.data.demo import RESTORE_BLUR_SIGMA, RESTORE_NOISE_SD

        b01 = ((item["B"] + 1) / 2).permute(1, 2, 0).numpy()
        blurred = gaussian(b01, sigma=RESTORE_BLUR_SIGMA * 64 / 128, channel_axis=-1)
        residual = ((item["A"] + 1) / 2).permute(1, 2, 0).numpy() - blurred
        assert abs(residual.mean()) < 0.01
        assert 0.8 * RESTORE_NOISE_SD < residual.std() < 1.2 * RESTORE_NOISE_SD


def test_demo_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a demo task"):
        build_demo_dataset(tmp_path / "x", size=64, crops_per_image=1, task="watercolour")
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_to_overwrite_other_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        build_demo_dataset(tmp_path / "mine", size=64, crops_per_image=1)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_demo_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collabprune.data.demo as demo

    def boom(*args: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(demo, "make_input", boom)
    with pytest.raises(RuntimeError):
        build_demo_dataset(tmp_path / "demo", size=64, crops_per_image=1)
    assert list(tmp_path.iterdir()) == []


def test_dataloader_workers_draw_different_augmentations(tmp_path: Path) -> None:
    img = _noise(4)
    for i in range(4):
        _save_pair(tmp_path / "train" / f"{i}.png", img, img)
    ds = AlignedDataset(tmp_path, "train", _cfg(tmp_path, load_size=48, crop_size=16))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    batches = [b["A"] for b in loader]
    assert all(torch.equal(b["A"], b["B"]) for b in loader)
    assert not torch.equal(batches[0], batches[1])  # worker 0 and worker 1 differ
