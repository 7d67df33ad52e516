"""A tiny, fast run setup for tests: 64x64 demo data, a ResNet ngf=8 teacher trained for one epoch."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from collabprune import heldout
from collabprune.config import RunConfig, load_config
from collabprune.data.demo import build_demo_dataset
from collabprune.metrics import eval_net
from collabprune.teacher import teacher_files_exist, train_teacher

TINY_OVERRIDES = [
    "data.load_size=72", "data.crop_size=64",
    "model.net_g=resnet_6blocks", "model.ngf=8", "model.ndf=8", "model.norm=instance", "model.use_dropout=true",
    "teacher.n_epochs=1", "teacher.n_epochs_decay=0", "teacher.batch_size=4",
    "pruning.round_to=4", "pruning.min_channels=4", "pruning.r_min=0.1",
    "pruning.budget.generator=0.5", "pruning.budget.discriminator=0.6",
    "reward.fid.mode=fd_teacher_d", "reward.fid.max_images=8",
    "reward.kde.centres=2", "reward.kde.neighbours=4",
    "finetune.steps=3", "finetune.batch_size=2", "finetune.kde_every=2", "finetune.device=cpu",
    "search.rounds=2", "search.num_evaluators=1", "search.checkpoint_every=1", "agents.warmup_episodes=1", "agents.batch_size=8",
]


def tiny_config(root: Path, extra: list[str] | None = None) -> RunConfig:
    """A tiny config whose data and teacher live under ``root`` (built on first use, then reused)."""
    data = root / "data"
    build_demo_dataset(data, size=64, crops_per_image=2, seed=0)
    cfg = load_config(None, [*TINY_OVERRIDES, f"data.root={data}", f"teacher.checkpoint_dir={root / 'teacher'}",
                             f"output.run_dir={root / 'run'}", *(extra or [])])
    if not teacher_files_exist(cfg):
        train_teacher(cfg, progress=False)
    return cfg


def short_eval_net(monkeypatch: pytest.MonkeyPatch, steps: int = 40) -> None:
    """Make the held-out evaluator train its evaluation network for ``steps`` steps instead of 400 (the
    real network, training and cache, only shorter). For end-to-end tests of the summary's plumbing;
    tests/test_heldout_metrics.py checks the network itself."""
    monkeypatch.setattr(heldout, "load_or_train_eval_net",
                        functools.partial(eval_net.load_or_train_eval_net, steps=steps))
