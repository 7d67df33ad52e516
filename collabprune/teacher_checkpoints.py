"""The teacher pair of a run: which checkpoint files, loading them, and a D warm-up when only G is given.

Upstream file names (pytorch-CycleGAN-and-pix2pix ``save_networks``):

- pix2pix: ``latest_net_G.pth`` and ``latest_net_D.pth``;
- CycleGAN, a user's own training: ``latest_net_G_A.pth`` (A -> B, the network that is compressed) and
  its adversary ``latest_net_D_A.pth``. Upstream's code names the networks G_A (the paper's G), G_B
  (F), D_A (D_Y) and D_B (D_X): D_A is the one that tells real B images from G_A's outputs
  (``cycle_gan_model.py``: ``loss_G_A = criterionGAN(netD_A(fake_B), True)``), the "D_B" of DESIGN.md
  §2, which names it by the domain it judges. ``latest_net_D_B.pth`` judges A images and is not used.
  Upstream's released CycleGAN models hold one generator, ``latest_net_G.pth``, with the keys of
  ``ResnetGenerator``.

Upstream releases generators only (DESIGN.md §2). When the teacher folder has no discriminator,
:func:`warm_up_discriminator` trains one from upstream's initialisation against the frozen teacher G
for ``teacher.d_warmup_steps`` steps (GAN loss of ``teacher.gan_mode``, Adam(``teacher.lr``, betas
(``teacher.beta1``, 0.999)), training batches, seeded by ``teacher.seed``) and caches it in the run
directory (``teacher_d/latest_net_D.pth`` with the key it was made from), so every evaluator of the run
starts from the same D.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from collabprune.config import RunConfig
from collabprune.errors import CheckpointError
from collabprune.io import atomic_torch_save, atomic_write_json, file_sha256
from collabprune.models import build_discriminator, build_generator, family_of, load_state_dict_strict, read_state_dict

G_FILE = "latest_net_G.pth"
D_FILE = "latest_net_D.pth"
G_A_FILE = "latest_net_G_A.pth"
G_B_FILE = "latest_net_G_B.pth"
D_A_FILE = "latest_net_D_A.pth"
D_B_FILE = "latest_net_D_B.pth"
#: Where a run keeps its warmed-up discriminator (relative to the run directory).
WARMUP_DIR = "teacher_d"

#: family -> (generator file names in order of preference, discriminator file names)
_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pix2pix": ((G_FILE,), (D_FILE,)),
    "cyclegan": ((G_A_FILE, G_FILE), (D_A_FILE,)),
}

__all__ = [
    "D_A_FILE", "D_B_FILE", "D_FILE", "G_A_FILE", "G_B_FILE", "G_FILE", "TeacherFiles", "WARMUP_DIR",
    "load_teacher", "load_teacher_generator", "teacher_files", "warm_up_discriminator",
]


@dataclass(frozen=True)
class TeacherFiles:
    """The teacher checkpoints found in ``teacher.checkpoint_dir``.

    :param g: the generator's state dict file.
    :param d: the discriminator's, or ``None`` when the folder has none (a D warm-up is needed).
    """

    g: Path
    d: Path | None


def teacher_files(cfg: RunConfig) -> TeacherFiles:
    """The teacher files of a run config (upstream names of its family, module docstring).

    :raises CheckpointError: the folder holds no generator checkpoint of the family.
    """
    folder = Path(cfg.teacher.checkpoint_dir)
    g_names, d_names = _NAMES[cfg.model.family]
    g = next((folder / n for n in g_names if (folder / n).is_file()), None)
    if g is None:
        raise CheckpointError(f"{folder}: no {cfg.model.family} generator checkpoint ({' or '.join(g_names)})",
                              hint="train one with `collabprune train-teacher`, or set teacher.checkpoint_dir")
    d = next((folder / n for n in d_names if (folder / n).is_file()), None)
    return TeacherFiles(g=g, d=d)


def load_teacher_generator(cfg: RunConfig, inplace: bool = False) -> nn.Module:
    """The teacher generator (G, or G_A for CycleGAN) in eval mode, on the CPU.

    :raises CheckpointError: missing checkpoint, or keys/shapes that do not match ``cfg.model``.
    """
    path = teacher_files(cfg).g
    net_g = build_generator(cfg, inplace=inplace)
    load_state_dict_strict(net_g, read_state_dict(path), str(path))
    return net_g.eval()


def load_teacher(cfg: RunConfig, inplace: bool = False, run_dir: Path | None = None) -> tuple[nn.Module, nn.Module, TeacherFiles]:
    """The teacher pair in eval mode, on the CPU, and the files it came from.

    :param run_dir: where a warmed-up discriminator is cached when the teacher folder has none;
        required then.
    :returns: ``(G, D, files)``; ``files.d`` is the cached warmed-up D's file when there was none.
    :raises CheckpointError: a checkpoint is missing or does not match ``cfg.model``, or no D was given
        and there is no run directory to warm one up in.
    """
    files = teacher_files(cfg)
    net_g = load_teacher_generator(cfg, inplace)
    if files.d is None:
        if run_dir is None:
            raise CheckpointError(f"{cfg.teacher.checkpoint_dir}: no discriminator checkpoint and no run directory "
                                  "to warm one up in")
        d_path = warm_up_discriminator(cfg, net_g, Path(run_dir) / WARMUP_DIR, files.g)
        files = TeacherFiles(g=files.g, d=d_path)
    net_d = build_discriminator(cfg, inplace=inplace)
    load_state_dict_strict(net_d, read_state_dict(files.d), str(files.d))
    return net_g, net_d.eval(), files


def _warmup_key(cfg: RunConfig, g_path: Path) -> dict:
    tc = cfg.teacher
    return {"generator_sha256": file_sha256(g_path), "steps": tc.d_warmup_steps, "gan_mode": tc.gan_mode,
            "lr": tc.lr, "beta1": tc.beta1, "seed": tc.seed, "batch_size": cfg.finetune.batch_size,
            "family": cfg.model.family, "model": cfg.model.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json")}


def warm_up_discriminator(cfg: RunConfig, teacher_g: nn.Module, folder: Path, g_path: Path) -> Path:
    """Train a discriminator against the frozen teacher generator, or reuse the cached one.

    D (built by :func:`~collabprune.models.build_discriminator`) learns real B (``family.d_input``
    of real pairs, or real B images alone for CycleGAN's D_B) -> real and the teacher's outputs ->
    fake for ``teacher.d_warmup_steps`` steps on the training split; the teacher G is not trained.

    :param teacher_g: the teacher generator (eval mode; not modified).
    :param folder: the cache folder (``RUN_DIR/teacher_d``).
    :param g_path: the teacher generator's file (its SHA-256 is part of the cache key).
    :returns: the path of the D state dict (``folder/latest_net_D.pth``).
    """
    from collabprune.data import train_split
    from collabprune.finetune import training_batches
    from collabprune.objectives import GANLoss
    from collabprune.runtime import resolve_device, seed_everything

    folder = Path(folder)
    path, key_path = folder / D_FILE, folder / "warmup.json"
    key = _warmup_key(cfg, g_path)
    if path.is_file() and key_path.is_file():
        try:
            if json.loads(key_path.read_text()).get("key") == key:
                return path
        except ValueError:
            pass
    tc = cfg.teacher
    device = resolve_device(cfg.finetune.device)
    seed_everything(tc.seed)
    family = family_of(cfg)
    net_d = build_discriminator(cfg).to(device).train()
    teacher = teacher_g.to(device).eval()
    opt = torch.optim.Adam(net_d.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999))
    gan = GANLoss(tc.gan_mode).to(device)
    batches = training_batches(train_split(cfg.data, train=True), cfg.finetune.batch_size, tc.seed)
    losses = []
    for _ in range(tc.d_warmup_steps):
        item = next(batches)
        a, b = item["A"].to(device), item["B"].to(device)
        with torch.no_grad():
            fake = teacher(a)
        loss = 0.5 * (gan(net_d(family.d_input(a, fake)), False) + gan(net_d(family.d_input(a, b)), True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    teacher_g.cpu()
    atomic_torch_save({k: v.detach().cpu() for k, v in net_d.state_dict().items()}, path)
    tail = losses[-max(1, len(losses) // 10):]
    atomic_write_json(key_path, {"key": key, "final_loss": sum(tail) / len(tail)})
    return path
