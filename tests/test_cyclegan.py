"""CycleGAN teacher and its unpaired demo task: the ``cartoon`` dataset (unaligned layout,
deterministic), the image pool's upstream semantics, training + resume with upstream file names, and
the config rule that ties the demo task to the dataset layout."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest
import torch

from collabprune.config import DataConfig, RunConfig, load_config
from collabprune.cyclegan_teacher import ImagePool, build_cyclegan_nets
from collabprune.data import make_dataset
from collabprune.data.demo import build_demo_dataset, cartoonise, demo_is_built, pencil_sketch, task_folders
from collabprune.errors import ConfigError
from collabprune.models import build_discriminator, build_generator, load_state_dict_strict, read_state_dict
from collabprune.teacher import train_teacher

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.family=cyclegan", "data.dataset_mode=unaligned", "data.load_size=32", "data.crop_size=32",
        "model.net_g=resnet_6blocks", "model.ngf=4", "model.ndf=4", "model.norm=instance", "model.use_dropout=false",
        "teacher.n_epochs=1", "teacher.n_epochs_decay=1", "teacher.batch_size=4", "teacher.gan_mode=lsgan",
        "teacher.pool_size=4", "finetune.device=cpu"]


def cartoon_data(root: Path) -> Path:
    """A tiny ``cartoon`` dataset (32 px, 1 train crop per photograph and domain)."""
    build_demo_dataset(root, size=32, crops_per_image=1, seed=0, task="cartoon")
    return root


def tiny_config(tmp_path: Path) -> RunConfig:
    data = cartoon_data(tmp_path / "data")
    return load_config(None, [*TINY, f"data.root={data}", f"teacher.checkpoint_dir={tmp_path / 'teacher'}"])


def test_cartoon_dataset_is_unaligned_and_deterministic(tmp_path: Path) -> None:
    counts = build_demo_dataset(tmp_path / "one", size=32, crops_per_image=2, seed=1, task="cartoon")
    assert set(counts) == set(task_folders("cartoon")) == {f"{s}{d}" for s in ("train", "val", "test") for d in "AB"}
    assert counts["trainA"] == counts["trainB"] >= 2 * counts["testA"] and counts["testA"] == counts["testB"] > 0
    assert build_demo_dataset(tmp_path / "two", size=32, crops_per_image=2, seed=1, task="cartoon") == counts
    diff = subprocess.run(["diff", "-r", str(tmp_path / "one"), str(tmp_path / "two")], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout[:500]
    assert demo_is_built(tmp_path / "one", 32, 2, 1, "cartoon")
    assert not demo_is_built(tmp_path / "one", 32, 2, 1, "restore") and not demo_is_built(tmp_path / "one", 32, 3, 1, "cartoon")
    assert build_demo_dataset(tmp_path / "one", size=32, crops_per_image=2, seed=1, task="cartoon") == counts  # reused
    assert not list(tmp_path.glob(".*building*"))
    meta = json.loads((tmp_path / "one" / "demo_meta.json").read_text())
    assert meta["layout"] == "unaligned" and meta["params"]["task"] == "cartoon"
    # A and B crops are drawn independently: their boxes differ.
    assert meta["boxes"]["trainA"] != meta["boxes"]["trainB"]
    # The real unaligned loader reads it.
    cfg = DataConfig(root=tmp_path / "one", dataset_mode="unaligned", load_size=32, crop_size=32)
    item = make_dataset(cfg, "test", train=False)[0]
    assert item["A"].shape == item["B"].shape == (3, 32, 32)


def test_cartoonise_flattens_colours_and_draws_edges() -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), 200, np.uint8)
    img[16:48, 16:48] = (30, 90, 160)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)  # texture/noise
    out = np.asarray(cartoonise(Image.fromarray(img), 64))
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 8  # a few flat colours
    assert (out[14:18, 30:34] == 0).all(axis=-1).any()  # a black line on the square's top edge
    assert not (out[30:34, 30:34] == 0).all(axis=-1).any()  # none inside it
    black = (out == 0).all(axis=-1)[8:24, 32]  # down the column through the top edge: a 1 px line at 64 px
    big = (np.asarray(cartoonise(Image.fromarray(img).resize((128, 128), Image.NEAREST), 128)) == 0).all(axis=-1)
    assert black.sum() == 1 and big[16:48, 64].sum() == 2  # ... and 2 px at 128 px (lines scale with the crop)


def test_pencil_sketch_darkens_the_dark_side_of_edges_only() -> None:
    import numpy as np
    from PIL import Image

    img = np.full((64, 64, 3), 200, np.uint8)
    img[16:48, 16:48] = (30, 90, 160)  # a dark square (luminance 80) on a light ground (200)
    out = np.asarray(pencil_sketch(Image.fromarray(img), 64)).astype(int)
    assert out.shape == (64, 64, 3) and (out == out[..., :1]).all()  # 3 equal (grey) channels
    col = out[8:24, 32, 0]  # down the column through the square's top edge (row 16)
    assert (col[:8] == 255).all()  # the light side of the edge: white
    assert 130 < col[8] < 200 and col[8] < col[9] < col[10] < 255  # dark just inside, fading within ~3 sigma
    assert out[32, 32, 0] == 255 and out[4, 4, 0] == 255  # flat regions, dark or light, are white: not a colour map
    big = np.asarray(pencil_sketch(Image.fromarray(img).resize((128, 128), Image.NEAREST), 128))[16:48, 64, 0]
    assert (col < 250).sum() == 3 and (big < 250).sum() == 7  # the stroke widens with the crop (sigma scales)
    # A colour dodge of g by its local mean: halving the brightness changes nothing; black stays black.
    half = np.asarray(pencil_sketch(Image.fromarray(img // 2), 64)).astype(int)
    assert np.abs(half - out).max() <= 1
    assert np.asarray(pencil_sketch(Image.new("RGB", (32, 32)), 32)).max() == 0


def test_sketch_dataset_is_unaligned_with_grey_b(tmp_path: Path) -> None:
    counts = build_demo_dataset(tmp_path / "d", size=32, crops_per_image=1, seed=0, task="sketch")
    assert set(counts) == set(task_folders("sketch")) and counts["trainA"] == counts["trainB"] > 0
    assert demo_is_built(tmp_path / "d", 32, 1, 0, "sketch") and not demo_is_built(tmp_path / "d", 32, 1, 0, "cartoon")
    meta = json.loads((tmp_path / "d" / "demo_meta.json").read_text())
    assert meta["layout"] == "unaligned" and meta["boxes"]["trainA"] != meta["boxes"]["trainB"]
    cfg = DataConfig(root=tmp_path / "d", dataset_mode="unaligned", load_size=32, crop_size=32,
                     demo={"task": "sketch", "size": 32})
    item = make_dataset(cfg, "test", train=False)[0]
    assert torch.equal(item["B"][0], item["B"][1]) and not torch.equal(item["A"][0], item["A"][1])


def test_image_pool_follows_upstream() -> None:
    x = torch.randn(3, 2, 4, 4)
    assert ImagePool(0).query(x) is x  # pool_size 0: the input itself
    pool = ImagePool(4, seed=0)
    assert torch.equal(pool.query(x), x) and len(pool) == 3  # not full: stores and returns the new images
    assert torch.equal(pool.query(-torch.ones(1, 2, 4, 4)), -torch.ones(1, 2, 4, 4)) and len(pool) == 4
    old = torch.cat(pool.images)
    new = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 2, 4, 4) + 100  # image j is all 100 + j
    mixed = pool.query(new)
    assert mixed.shape == new.shape and len(pool) == 4
    own = [torch.equal(m, n) for m, n in zip(mixed, new)]
    from_old = [any(torch.equal(m, o) for o in old) for m in mixed]
    earlier_new = [any(torch.equal(m, n) for n in new[:j]) for j, m in enumerate(mixed)]
    assert all(a or b or c for a, b, c in zip(own, from_old, earlier_new))  # nothing else comes out
    assert 0 < sum(own) < 16 and any(from_old)  # a mix of the current batch and stored images
    again = ImagePool(4, seed=0)
    again.query(x), again.query(-torch.ones(1, 2, 4, 4))
    assert torch.equal(again.query(new), mixed)  # seeded


def test_tiny_teacher_trains_resumes_and_loads_strictly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collabprune.cyclegan_teacher as cg

    # The evaluation network's 400 training steps take most of a minute on a busy CPU; 10 suffice here.
    monkeypatch.setattr(cg, "load_or_train_eval_net", functools.partial(cg.load_or_train_eval_net, steps=10))
    cfg = tiny_config(tmp_path)
    first = train_teacher(cfg, progress=False, max_epochs=1)
    assert first["epochs_done"] == 1 and first["epochs_total"] == 2
    out = cfg.teacher.checkpoint_dir
    names = ("latest_net_G_A.pth", "latest_net_G_B.pth", "latest_net_D_A.pth", "latest_net_D_B.pth",
             "latest_train_state.pth", "teacher_samples.png", "teacher_report.json")
    for name in names:
        assert (out / name).is_file(), name
    before = torch.load(out / "latest_net_G_A.pth", weights_only=True)
    second = train_teacher(cfg, progress=False)  # resumes at epoch 1, finishes the schedule
    assert second["epochs_done"] == 2
    after = torch.load(out / "latest_net_G_A.pth", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    report = json.loads((out / "teacher_report.json").read_text())
    assert report["epochs_done"] == 2 and report["test_images"] > 0 and report["identity_loss"] is True
    for key in ("loss_g_a", "loss_g_b", "loss_cycle_a", "loss_cycle_b", "loss_idt_a", "loss_idt_b", "loss_d_a",
                "loss_d_b", "test_fd_eval", "input_fd_eval", "seconds"):
        assert isinstance(report[key], float) and report[key] == report[key], key
    # Upstream names, strict loads: G_A into build_generator, D_A (judges B images) into build_discriminator.
    load_state_dict_strict(build_generator(cfg), read_state_dict(out / "latest_net_G_A.pth"), "G_A")
    load_state_dict_strict(build_discriminator(cfg), read_state_dict(out / "latest_net_D_A.pth"), "D_A")
    nets = build_cyclegan_nets(cfg)
    load_state_dict_strict(nets.g_b, read_state_dict(out / "latest_net_G_B.pth"), "G_B")
    load_state_dict_strict(nets.d_b, read_state_dict(out / "latest_net_D_B.pth"), "D_B")
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.demo.task=cartoon"],
     "section 'data': demo.task=cartoon writes unaligned data, but dataset_mode=aligned; "
     "allowed: dataset_mode=unaligned, or demo.task=restore, colourise or edges"),
    (["model.family=cyclegan", "data.dataset_mode=unaligned", "data.demo.task=edges"],
     "section 'data': demo.task=edges writes aligned data, but dataset_mode=unaligned; "
     "allowed: dataset_mode=aligned, or demo.task=cartoon or sketch"),
    (["data.demo.task=sketch"],
     "section 'data': demo.task=sketch writes unaligned data, but dataset_mode=aligned; "
     "allowed: dataset_mode=unaligned, or demo.task=restore, colourise or edges"),
])
def test_demo_task_must_match_layout(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value) == f"defaults: {message}" and "\n" not in str(err.value)


def test_unaligned_config_defaults_to_the_unpaired_task() -> None:
    assert load_config(None, ["model.family=cyclegan", "data.dataset_mode=unaligned"]).data.demo.task == "cartoon"
    assert DataConfig(dataset_mode="unaligned", demo={"size": 64}).demo.task == "cartoon"
    assert load_config(None).data.demo.task == "restore"


def test_cyclegan_demo_config_is_valid() -> None:
    cfg = load_config(REPO / "configs" / "cyclegan_demo.yaml")
    assert cfg.model.family == "cyclegan" and cfg.data.dataset_mode == "unaligned"
    assert cfg.data.demo.task == "sketch" and cfg.teacher.gan_mode == "lsgan"
    x = torch.zeros(1, cfg.data.input_nc, cfg.data.crop_size, cfg.data.crop_size)
    assert build_generator(cfg)(x).shape == x.shape  # the generator takes the configured crop
    assert build_discriminator(cfg)(x).shape[1] == 1  # D_A: B images alone
