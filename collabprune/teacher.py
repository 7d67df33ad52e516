"""pix2pix teacher training with the upstream recipe (Isola et al. 2017, §3 and §4).

Loss: vanilla GAN + ``lambda_l1`` * L1 (100 upstream); Adam(lr 2e-4, betas (0.5, 0.999)); constant
learning rate for ``n_epochs`` then linear decay to zero over ``n_epochs_decay`` (upstream's
``lambda_rule``). Checkpoints use upstream file names (``latest_net_G.pth``, ``latest_net_D.pth``,
plain state dicts) so upstream code can read them; ``latest_train_state.pth`` adds the optimiser
state and epoch so training resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from collabprune.config import RunConfig
from collabprune.data import make_dataset, train_split
from collabprune.errors import CheckpointError
from collabprune.io import atomic_path, atomic_torch_save, atomic_write_json
from collabprune.models import FAMILIES, Family, build_discriminator, build_generator, load_state_dict_strict, read_state_dict
from collabprune.objectives.losses import GANLoss
from collabprune.runtime import resolve_device, seed_everything
from collabprune.teacher_checkpoints import D_FILE, G_FILE, teacher_files

STATE_FILE = "latest_train_state.pth"
REPORT_FILE = "teacher_report.json"
GRID_FILE = "teacher_samples.png"


@dataclass
class AdversarialStep:
    """One GAN optimisation step on a (G, D) pair: D first, then G (upstream order).

    pix2pix (Isola et al. 2017, eq. 4): D sees ``cat(A, B)``; G's loss is the GAN loss plus
    ``lambda_l1`` * L1 to the ground truth. CycleGAN's G_A/D_B pair (DESIGN.md §2): D sees a B image
    alone and ``real_b`` is an unpaired real B image, so there is no L1 to it; the caller adds
    distillation to the teacher through ``extra_g_loss``.

    :param net_g: generator, (B, in_nc, H, W) -> (B, out_nc, H, W).
    :param net_d: PatchGAN, (B, family.d_input_nc, H, W) -> (B, 1, H', W').
    :param opt_g: optimiser of ``net_g``.
    :param opt_d: optimiser of ``net_d``.
    :param gan_loss: :class:`GANLoss`.
    :param lambda_l1: weight of the L1 term to the ground truth (used only when ``family.paired``).
    :param family: the model family (:class:`~collabprune.models.Family`): D's input and pairing.
    """

    net_g: nn.Module
    net_d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    gan_loss: nn.Module
    lambda_l1: float
    family: Family = FAMILIES["pix2pix"]

    def __call__(
        self, real_a: torch.Tensor, real_b: torch.Tensor, extra_g_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Run one step.

        :param real_a: inputs (B, in_nc, H, W) in [-1, 1].
        :param real_b: targets (B, out_nc, H, W) in [-1, 1] (unpaired real B images for CycleGAN).
        :param extra_g_loss: optional extra generator loss of the fake batch (e.g. distillation).
        :returns: ``d``, ``d_real``, ``d_fake``, ``g_gan``, ``g_l1`` and ``g_extra`` loss values.
        """
        d_in = self.family.d_input
        fake_b = self.net_g(real_a)
        # D: real -> 1, fake -> 0.
        for p in self.net_d.parameters():
            p.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d_fake = self.gan_loss(self.net_d(d_in(real_a, fake_b.detach())), False)
        loss_d_real = self.gan_loss(self.net_d(d_in(real_a, real_b)), True)
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        loss_d.backward()
        self.opt_d.step()
        # G: fool D (and, paired, stay close to the target).
        for p in self.net_d.parameters():
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g_gan = self.gan_loss(self.net_d(d_in(real_a, fake_b)), True)
        loss_g_l1 = (nn.functional.l1_loss(fake_b, real_b) * self.lambda_l1 if self.family.paired
                     else fake_b.new_zeros(()))
        loss_extra = extra_g_loss(fake_b) if extra_g_loss is not None else fake_b.new_zeros(())
        (loss_g_gan + loss_g_l1 + loss_extra).backward()
        self.opt_g.step()
        for p in self.net_d.parameters():
            p.requires_grad_(True)
        return {
            "d": loss_d.item(),
            "d_real": loss_d_real.item(),
            "d_fake": loss_d_fake.item(),
            "g_gan": loss_g_gan.item(),
            "g_l1": loss_g_l1.item(),
            "g_extra": float(loss_extra.item()),
        }


def linear_decay(n_epochs: int, n_epochs_decay: int) -> Callable[[int], float]:
    """Upstream's ``lambda_rule``: the learning-rate factor of epoch ``e`` (0-based) is 1 for
    ``n_epochs`` epochs, then falls linearly towards 0 over ``n_epochs_decay`` epochs."""

    def rule(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)

    return rule


def adam_pair(net_g: nn.Module, net_d: nn.Module, lr: float, beta1: float) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Upstream optimisers: Adam(lr, betas=(beta1, 0.999)) for G and for D."""
    return (
        torch.optim.Adam(net_g.parameters(), lr=lr, betas=(beta1, 0.999)),
        torch.optim.Adam(net_d.parameters(), lr=lr, betas=(beta1, 0.999)),
    )


def run_epochs(
    loader: Iterable[dict[str, Any]],
    step: Callable[[dict[str, Any]], dict[str, float]],
    optimisers: Sequence[torch.optim.Optimizer],
    lr: float,
    rule: Callable[[int], float],
    epochs: range,
    total_epochs: int,
    save: Callable[[int], None],
    save_every: int,
    title: str,
    progress: bool,
    describe: Callable[[dict[str, float]], str],
) -> dict[str, float]:
    """The epoch loop of a teacher training (pix2pix and CycleGAN): learning-rate schedule, steps,
    progress bar and checkpoints.

    Each epoch sets every optimiser's learning rate to ``lr * rule(epoch)`` (upstream's per-epoch
    ``lambda_rule``), runs ``step`` on every batch of ``loader``, and calls ``save(epoch + 1)`` every
    ``save_every`` epochs and after the last one.

    :param step: one optimisation step on a batch; returns its loss values.
    :param epochs: the 0-based epochs to run in this call (a resumed run starts later).
    :param total_epochs: epochs of the whole schedule (for the progress bar).
    :param title: the progress bar's label.
    :param describe: the losses of a step as a short progress text.
    :returns: the mean loss values of the last epoch run (empty when no epoch ran).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn(title + " epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
               TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn())
    losses: dict[str, float] = {}
    n_batches = len(loader)  # type: ignore[arg-type]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=len(epochs) * n_batches, epoch=epochs.start, epochs=total_epochs, losses="")
        for epoch in epochs:
            for opt in optimisers:
                for group in opt.param_groups:
                    group["lr"] = lr * rule(epoch)
            sums: dict[str, float] = {}
            for item in loader:
                vals = step(item)
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(task, advance=1, epoch=epoch + 1, losses=describe(vals))
            losses = {k: v / n_batches for k, v in sums.items()}
            if (epoch + 1) % save_every == 0 or epoch + 1 == epochs.stop:
                save(epoch + 1)
    return losses


def teacher_files_exist(cfg: RunConfig) -> bool:
    """Whether ``cfg.teacher.checkpoint_dir`` holds a generator and a discriminator checkpoint of the
    run's family (:func:`~collabprune.teacher_checkpoints.teacher_files`)."""
    try:
        return teacher_files(cfg).d is not None
    except CheckpointError:
        return False


@torch.no_grad()
def test_l1_report(net_g: nn.Module, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    """Test-split L1 of the generator to the ground truth vs two trivial baselines.

    :returns: ``test_l1`` (mean absolute error in [-1, 1] units), ``mean_image_l1`` (the same for
        predicting the training set's mean target image), ``input_l1`` (for passing the input through
        unchanged, when input and target have the same channels; else ``None``), ``test_images``.
    """
    train = make_dataset(cfg.data, "train", train=False)
    test = make_dataset(cfg.data, "test", train=False)
    mean_b = torch.stack([train[i]["B"] for i in range(len(train))]).mean(0)
    was_training = net_g.training
    net_g.eval()
    l1, base, passthrough = 0.0, 0.0, 0.0
    same_space = cfg.data.input_nc == cfg.data.output_nc
    for item in DataLoader(test, batch_size=8):
        fake = net_g(item["A"].to(device)).cpu()
        l1 += (fake - item["B"]).abs().mean(dim=(1, 2, 3)).sum().item()
        base += (mean_b - item["B"]).abs().mean(dim=(1, 2, 3)).sum().item()
        if same_space:
            passthrough += (item["A"] - item["B"]).abs().mean(dim=(1, 2, 3)).sum().item()
    net_g.train(was_training)
    return {"test_l1": l1 / len(test), "mean_image_l1": base / len(test),
            "input_l1": passthrough / len(test) if same_space else None, "test_images": len(test)}


@torch.no_grad()
def save_sample_grid(net_g: nn.Module, cfg: RunConfig, path: Path, device: torch.device, n: int = 6) -> None:
    """Write a PNG grid, one row per test image: input | generator output | the item's B image.

    The ``n`` rows are spread evenly over the test split (so they show different source images). For
    paired data the B image is the ground truth; for unpaired data (CycleGAN) it is an unrelated real B
    image, a reference of the target domain.
    """
    from torchvision.utils import save_image

    test = make_dataset(cfg.data, "test", train=False)
    was_training = net_g.training
    net_g.eval()
    rows = []
    for i in range(min(n, len(test))):
        item = test[i * len(test) // min(n, len(test))]
        a = item["A"].unsqueeze(0)
        fake = net_g(a.to(device)).cpu()
        rows += [a[0], fake[0], item["B"]]
    net_g.train(was_training)
    grid = torch.stack([(r.expand(3, -1, -1) + 1) / 2 for r in rows])
    with atomic_path(path) as tmp:
        save_image(grid, str(tmp), nrow=3, padding=2, format="png")


def train_teacher(cfg: RunConfig, progress: bool = True, max_epochs: int | None = None) -> dict[str, float]:
    """Train (or resume training) the teacher of ``cfg`` and write its checkpoints.

    ``model.family`` pix2pix: files in ``cfg.teacher.checkpoint_dir``: ``latest_net_G.pth``,
    ``latest_net_D.pth`` (upstream names, state dicts), ``latest_train_state.pth`` (optimisers,
    epoch), ``teacher_samples.png`` (input | output | ground truth rows from the test split) and
    ``teacher_report.json``. ``model.family`` cyclegan: upstream's CycleGAN recipe with G_A, G_B, D_A,
    D_B (:func:`collabprune.cyclegan_teacher.train_cyclegan_teacher`, which documents its files and
    report).

    :param cfg: the run config (``data``, ``model``, ``teacher`` sections).
    :param progress: show a rich progress bar with the losses.
    :param max_epochs: stop after this many epochs in this call (for tests); the schedule is unchanged.
    :returns: the report: epochs, seconds, final losses, and the held-out numbers (pix2pix:
        ``test_l1`` and ``mean_image_l1``; CycleGAN: ``test_fd_eval`` and ``input_fd_eval``).
    :raises DatasetError: the dataset is missing or unreadable.
    :raises CheckpointError: a checkpoint to resume from does not match the config.
    """
    if cfg.model.family == "cyclegan":
        from collabprune.cyclegan_teacher import train_cyclegan_teacher  # imports this module: no cycle here

        return train_cyclegan_teacher(cfg, progress=progress, max_epochs=max_epochs)
    tc = cfg.teacher
    out = tc.checkpoint_dir
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.finetune.device)
    seed_everything(tc.seed)
    dataset = train_split(cfg.data, train=True)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, drop_last=len(dataset) > tc.batch_size)
    net_g = build_generator(cfg).to(device).train()
    net_d = build_discriminator(cfg).to(device).train()
    opt_g, opt_d = adam_pair(net_g, net_d, tc.lr, tc.beta1)
    rule = linear_decay(tc.n_epochs, tc.n_epochs_decay)
    start_epoch = 0
    if (out / STATE_FILE).is_file() and teacher_files_exist(cfg):
        load_state_dict_strict(net_g, read_state_dict(out / G_FILE), str(out / G_FILE))
        load_state_dict_strict(net_d, read_state_dict(out / D_FILE), str(out / D_FILE))
        state = torch.load(out / STATE_FILE, map_location=device, weights_only=True)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start_epoch = int(state["epoch"])
        torch.manual_seed(tc.seed + start_epoch)
    step = AdversarialStep(net_g, net_d, opt_g, opt_d, GANLoss(tc.gan_mode).to(device), tc.lambda_l1)
    total_epochs = tc.n_epochs + tc.n_epochs_decay
    end_epoch = total_epochs if max_epochs is None else min(total_epochs, start_epoch + max_epochs)
    t0 = time.perf_counter()
    losses = run_epochs(
        loader, lambda item: step(item["A"].to(device), item["B"].to(device)), (opt_g, opt_d), tc.lr, rule,
        range(start_epoch, end_epoch), total_epochs, save=lambda e: _save(out, net_g, net_d, opt_g, opt_d, e),
        save_every=tc.save_every_epochs, title="teacher", progress=progress,
        describe=lambda v: f"D {v['d']:.3f}  G_GAN {v['g_gan']:.3f}  G_L1 {v['g_l1']:.2f}")
    report = {"epochs_done": end_epoch, "epochs_total": total_epochs, "seconds": time.perf_counter() - t0}
    report.update({f"loss_{k}": v for k, v in losses.items()})
    report.update(test_l1_report(net_g, cfg, device))
    save_sample_grid(net_g, cfg, out / GRID_FILE, device)
    atomic_write_json(out / REPORT_FILE, report)
    return report


def _save(out: Path, net_g: nn.Module, net_d: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, epoch: int) -> None:
    """Write the upstream-named state dicts, then the resume state (each atomically)."""
    atomic_torch_save({k: v.cpu() for k, v in net_g.state_dict().items()}, out / G_FILE)
    atomic_torch_save({k: v.cpu() for k, v in net_d.state_dict().items()}, out / D_FILE)
    atomic_torch_save({"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "epoch": epoch}, out / STATE_FILE)


def read_report(cfg: RunConfig) -> dict[str, float] | None:
    """The teacher report written by :func:`train_teacher`, or ``None`` when absent."""
    p = cfg.teacher.checkpoint_dir / REPORT_FILE
    return json.loads(p.read_text()) if p.is_file() else None
