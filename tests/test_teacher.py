"""pix2pix teacher training: the loss falls, checkpoints use upstream names and load strictly, resume."""

from __future__ import annotations

from pathlib import Path

import torch

from collabprune.config import RunConfig, load_config
from collabprune.data.demo import build_demo_dataset
from collabprune.models import build_discriminator, build_generator, load_generator
from collabprune.objectives.losses import GANLoss
from collabprune.teacher import AdversarialStep, adam_pair, linear_decay, train_teacher


def tiny_config(tmp_path: Path) -> RunConfig:
    root = tmp_path / "demo"
    build_demo_dataset(root, size=64, crops_per_image=2, seed=0)
    return load_config(None, [
        f"data.root={root}", "data.load_size=72", "data.crop_size=64",
        "model.net_g=resnet_6blocks", "model.ngf=8", "model.ndf=8", "model.norm=instance",
        f"teacher.checkpoint_dir={tmp_path / 'teacher'}", "teacher.n_epochs=1", "teacher.n_epochs_decay=1",
        "teacher.batch_size=4", "finetune.device=cpu",
    ])


def test_a_few_steps_reduce_the_loss(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    torch.manual_seed(0)
    g, d = build_generator(cfg), build_discriminator(cfg)
    opt_g, opt_d = adam_pair(g, d, 1e-3, 0.5)
    step = AdversarialStep(g, d, opt_g, opt_d, GANLoss("vanilla"), 100.0)
    a = torch.rand(4, 3, 64, 64) * 2 - 1
    b = -a.flip(1)  # a learnable mapping
    first = step(a, b)["g_l1"]
    for _ in range(20):
        last = step(a, b)["g_l1"]
    assert last < 0.93 * first


def test_linear_decay_matches_upstream_rule() -> None:
    rule = linear_decay(2, 3)
    assert [round(rule(e), 4) for e in range(5)] == [1.0, 1.0, 0.75, 0.5, 0.25]


def test_train_resume_and_upstream_files(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    first = train_teacher(cfg, progress=False, max_epochs=1)
    assert first["epochs_done"] == 1
    out = cfg.teacher.checkpoint_dir
    for name in ("latest_net_G.pth", "latest_net_D.pth", "teacher_samples.png", "teacher_report.json"):
        assert (out / name).is_file(), name
    before = torch.load(out / "latest_net_G.pth", weights_only=True)
    second = train_teacher(cfg, progress=False)  # resumes at epoch 1, finishes the schedule
    assert second["epochs_done"] == 2
    after = torch.load(out / "latest_net_G.pth", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    g = load_generator(out / "latest_net_G.pth", net_g="resnet_6blocks", norm="instance", ngf=8, use_dropout=True)
    assert g(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert second["test_l1"] > 0 and second["mean_image_l1"] > 0
    assert not list(out.glob("*.tmp"))


def test_teacher_line_reads_both_families_reports() -> None:
    """``collabprune train-teacher`` and the demo print a CycleGAN report (no ground truth) too."""
    from collabprune.demo import teacher_line

    pix = teacher_line({"test_l1": 0.0872, "mean_image_l1": 0.4854, "input_l1": 0.1183})
    assert "test L1 0.0872" in pix and "the input itself 0.1183" in pix
    cyc = teacher_line({"test_fd_eval": 3.5, "input_fd_eval": 2.18, "test_images": 80})
    assert "fd_eval 3.500" in cyc and "2.180" in cyc
