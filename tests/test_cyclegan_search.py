"""The CycleGAN family end to end (DESIGN.md §2): unpaired data, the ResNet G_A, the unconditional D.

A tiny unpaired dataset in upstream's unaligned layout (smooth random A images; B = A's colours
inverted, drawn independently), a randomly initialised teacher released as upstream does (one
``latest_net_G.pth``, no discriminator), so the search warms a D up in the run directory. Also: the
one-line errors of a wrong layout, a missing ``trainB`` and pix2pix keys given to a CycleGAN config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from collabprune.config import load_config, save_config
from collabprune.data import make_dataset
from collabprune.errors import CheckpointError, ConfigError, DatasetError
from collabprune.export import export_best
from collabprune.models import build_discriminator, build_generator, load_subnet
from collabprune.summary import summarise_run
from collabprune.teacher_checkpoints import WARMUP_DIR, load_teacher, teacher_files
from ray_head import RayHead
from tiny import short_eval_net

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 2


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a random 4x4 colour grid upsampled bilinearly (smooth, natural-ish)."""
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return np.asarray(small.resize((size, size), Image.BILINEAR))


def write_unaligned(root: Path, n: dict[str, int] | None = None, size: int = 40, seed: int = 0) -> Path:
    """Upstream's unaligned layout: ``root/{split}A`` smooth random images, ``root/{split}B`` inverted
    colours of other (independent) draws. :returns: ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (n or {"train": 6, "val": 3, "test": 3}).items():
        for side in "AB":
            folder = root / f"{split}{side}"
            folder.mkdir(parents=True)
            for i in range(count):
                img = _smooth_image(rng, size)
                Image.fromarray(img if side == "A" else 255 - img).save(folder / f"{i:02d}.png")
    return root


def _overrides(root: Path) -> list[str]:
    return [
        "model.family=cyclegan", "data.dataset_mode=unaligned", f"data.root={root / 'data'}",
        "data.load_size=36", "data.crop_size=32", "model.net_g=resnet_6blocks", "model.ngf=8", "model.ndf=8",
        "model.norm=instance", "model.use_dropout=false", "teacher.gan_mode=lsgan", "teacher.d_warmup_steps=3",
        f"teacher.checkpoint_dir={root / 'teacher'}", "finetune.device=cpu", "finetune.steps=3",
        "finetune.batch_size=2", "reward.fid.mode=fd_teacher_d", "reward.fid.max_images=4",
        "reward.kde.centres=2", "reward.kde.neighbours=2", "reward.kde.features=teacher_d",
        "pruning.round_to=2", "pruning.min_channels=2", "pruning.budget.generator=0.3",
        f"search.rounds={ROUNDS}", "search.checkpoint_every=1", "search.round_timeout_s=300",
        "search.num_evaluators=1", "search.reeval_top_k=0",
        "agents.warmup_episodes=1", "agents.batch_size=8", "agents.net_arch=[16,16]",
    ]


@pytest.fixture(scope="module")
def cyclegan_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unpaired data, an upstream-style released teacher (``latest_net_G.pth`` only), a config file."""
    root = tmp_path_factory.mktemp("cyclegan")
    write_unaligned(root / "data")
    cfg = load_config(None, _overrides(root))
    (root / "teacher").mkdir()
    torch.manual_seed(0)
    g = build_generator(cfg)
    state = g.state_dict()
    # upstream's released files were saved by an older PyTorch whose InstanceNorm kept running stats
    for name, module in g.named_modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(module.num_features)
            state[f"{name}.running_var"] = torch.ones(module.num_features)
    assert {"model.1.weight", "model.10.conv_block.1.weight", "model.2.running_mean"} <= set(state)  # upstream keys
    torch.save(state, root / "teacher" / "latest_net_G.pth")
    save_config(cfg, root / "search.yaml")
    return root / "search.yaml"


def test_cyclegan_discriminator_is_unconditional(cyclegan_setup: Path) -> None:
    cfg = load_config(cyclegan_setup)
    d = build_discriminator(cfg)
    assert d.model[0].in_channels == cfg.data.output_nc  # D_B-style: a B image alone, not cat(A, B)
    pix = load_config(None, ["model.ngf=8", "model.ndf=8"])
    assert build_discriminator(pix).model[0].in_channels == pix.data.input_nc + pix.data.output_nc


def test_released_generator_loads_strict_and_d_is_warmed_up_once(cyclegan_setup: Path, tmp_path: Path) -> None:
    cfg = load_config(cyclegan_setup)
    files = teacher_files(cfg)
    assert files.g.name == "latest_net_G.pth" and files.d is None
    with pytest.raises(CheckpointError, match="no discriminator checkpoint"):
        load_teacher(cfg)  # without a run directory there is nowhere to warm one up
    g, d, got = load_teacher(cfg, run_dir=tmp_path)
    assert got.d == tmp_path / WARMUP_DIR / "latest_net_D.pth" and got.d.is_file()
    before = got.d.stat().st_mtime_ns
    fresh = build_discriminator(cfg)
    assert any(not torch.equal(a, b) for a, b in zip(d.state_dict().values(), fresh.state_dict().values()))
    # the same key reuses the cached D; another warm-up length trains a new one
    _, d_again, _ = load_teacher(cfg, run_dir=tmp_path)
    assert got.d.stat().st_mtime_ns == before
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), d_again.state_dict().values()))
    longer = load_config(cyclegan_setup, ["teacher.d_warmup_steps=4"])
    load_teacher(longer, run_dir=tmp_path)
    assert got.d.stat().st_mtime_ns != before
    # a user's own training (G_A and its adversary D_A) is preferred over the released G
    own = tmp_path / "own"
    own.mkdir()
    torch.save(g.state_dict(), own / "latest_net_G_A.pth")
    torch.save(d.state_dict(), own / "latest_net_D_A.pth")
    mine = load_config(cyclegan_setup, [f"teacher.checkpoint_dir={own}"])
    assert teacher_files(mine) == type(files)(g=own / "latest_net_G_A.pth", d=own / "latest_net_D_A.pth")


def test_tiny_unpaired_search_runs_end_to_end(cyclegan_setup: Path, tmp_path: Path, ray_head: RayHead,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """search (CLI, the session's Ray head) -> held-out summary on fd_eval -> export."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run([sys.executable, "-m", "collabprune.cli", "--no-progress", "search", str(cyclegan_setup),
                           "--out", str(run_dir), "--address", ray_head.gcs_address],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(x) for x in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    searched = [r for r in lines if r.get("kind") == "search"]
    assert sorted(r["round"] for r in searched) == list(range(ROUNDS))
    assert (run_dir / WARMUP_DIR / "latest_net_D.pth").is_file()
    # scored without ground truth: FD of the outputs to real B images and L_kde to the teacher
    assert all(not r["diverged"] and r["reward"] is not None and r["metrics"]["fd_teacher_d"] is not None
               and r["metrics"]["l_kde"] is not None for r in searched)

    short_eval_net(monkeypatch)
    held = summarise_run(load_config(cyclegan_setup, ["finetune.final_steps=2", "finetune.final_seeds=1"]), run_dir)
    assert held.verdict.metric == "fd_eval"  # unpaired: no L1 to a ground truth
    assert all(r.l1 is None and r.fd_eval is not None for r in held.uniform + held.best)
    assert held.samples is not None and held.samples.is_file()

    out = tmp_path / "export"
    info = export_best(run_dir, out)
    assert info["teacher"]["generator_file"] == "latest_net_G.pth" and info["teacher"]["discriminator_warmed_up"]
    g, d = load_subnet(out)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert g(x).shape == x.shape and d(g(x)).shape[1] == 1


# ------------------------------------------------------------------ bad input: one line, exit 2


def _cli_error(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "collabprune.cli", "--no-progress", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_exit_2(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert lines and "Traceback" not in done.stderr, done.stderr
    assert all(n in done.stderr for n in needles), done.stderr


def test_wrong_layouts_and_checkpoints_are_one_line_errors(cyclegan_setup: Path, tmp_path: Path) -> None:
    cfg = load_config(cyclegan_setup)
    # an aligned folder given to a cyclegan config, and the reverse
    aligned = tmp_path / "aligned"
    (aligned / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(aligned / "train" / "x.png")
    with pytest.raises(DatasetError, match="holds an aligned dataset"):
        make_dataset(cfg.data.model_copy(update={"root": aligned}), "train")
    pix = load_config(None, [f"data.root={cfg.data.root}"])
    with pytest.raises(DatasetError, match="holds an unaligned dataset"):
        make_dataset(pix.data, "train")
    # a config mixing the family with the other layout
    with pytest.raises(ConfigError, match="model.family=cyclegan reads unaligned data"):
        load_config(None, ["model.family=cyclegan"])
    # a missing trainB
    no_b = write_unaligned(tmp_path / "no_b", {"train": 2})
    for f in (no_b / "trainB").iterdir():
        f.unlink()
    (no_b / "trainB").rmdir()
    with pytest.raises(DatasetError, match="trainB: dataset folder not found"):
        make_dataset(cfg.data.model_copy(update={"root": no_b}), "train")
    # a G_A checkpoint with pix2pix (U-Net) keys, through the CLI: one line on stderr, exit 2
    bad = tmp_path / "bad_teacher"
    bad.mkdir()
    torch.save(build_generator(load_config(None, ["model.ngf=8"])).state_dict(), bad / "latest_net_G_A.pth")
    _one_line_exit_2(_cli_error("evaluate", str(cyclegan_setup), "--set", f"teacher.checkpoint_dir={bad}"),
                     "latest_net_G_A.pth", "does not match the network")

