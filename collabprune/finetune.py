"""Short adversarial fine-tuning of a pruned (G, D) pair (DESIGN.md §4).

Adam with upstream's betas; with ``finetune.lr_decay`` the learning rate falls linearly to zero over
the steps (upstream's ``n_epochs_decay`` phase), so the result does not depend on the last few
batches (a constant rate leaves the final weights wandering from seed to seed). Per step: the D and G updates of
:class:`~collabprune.teacher.AdversarialStep` (GAN loss, plus for pix2pix ``lambda_l1`` * L1 to the
ground truth; CycleGAN's unpaired data has none), plus on G ``lambda_distill`` * L1 to the teacher's
output and, every ``kde_every`` steps, ``w_kde`` * L_kde between the teacher's and the student's
neighbourhoods of the batch. The D and G adversarial losses are recorded for the balance statistic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from collabprune.config import RunConfig
from collabprune.data import reseed
from collabprune.objectives import GANLoss
from collabprune.objectives.kde import FeatureMap, kde_loss
from collabprune.models import family_of
from collabprune.teacher import AdversarialStep, adam_pair

@torch.no_grad()
def recalibrate_batchnorm(nets: list[nn.Module], batches: list[tuple[torch.Tensor, ...]],
                          forward: Callable[..., None]) -> int:
    """Adaptive BatchNorm (Li et al. 2020, "EagleEye", §3.2): re-estimate every BatchNorm layer's
    running mean and variance of freshly pruned networks on training batches.

    The running statistics inherited from the teacher describe the teacher's channels, not the
    pruned network's activations; recomputing them makes a candidate's score right after pruning
    (and after short fine-tuning) track its final quality far better. Each BatchNorm layer is reset
    and put in cumulative-average mode (``momentum=None``), ``forward(*batch)`` runs every batch in
    train mode (dropout on, as in training), then momentum and the modes are restored. Weights and
    biases are not touched.

    :param nets: the networks whose BatchNorm layers are recalibrated (e.g. pruned G and D).
    :param batches: training batches, each a tuple of tensors for ``forward``.
    :param forward: runs the networks on one batch (its outputs are discarded).
    :returns: the number of BatchNorm layers recalibrated (0: nothing to do, e.g. instance norm).
    """
    bns = [m for net in nets for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return 0
    modes = [(net, net.training) for net in nets]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    for net in nets:
        net.train()
    try:
        for batch in batches:
            forward(*batch)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for net, mode in modes:
            net.train(mode)
    return len(bns)


@dataclass
class FinetuneResult:
    """What one fine-tuning run recorded.

    :param steps: steps completed.
    :param d_losses: D loss per step (mean of real and fake terms).
    :param g_adv_losses: G adversarial loss per step.
    :param diverged: a loss became NaN/inf (the run stopped there).
    :param seconds: wall time.
    """

    steps: int = 0
    d_losses: list[float] = field(default_factory=list)
    g_adv_losses: list[float] = field(default_factory=list)
    diverged: bool = False
    seconds: float = 0.0


def training_batches(data: Dataset, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless seeded shuffled batches of ``data`` (augmentation draws restarted from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    reseed(data, seed)
    while True:
        yield from DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=len(data) > batch_size, generator=gen)


def finetune_pair(
    student_g: nn.Module,
    student_d: nn.Module,
    teacher_g: nn.Module,
    phi: FeatureMap,
    data: Dataset,
    cfg: RunConfig,
    steps: int,
    seed: int,
    device: torch.device,
    lr: float | None = None,
) -> FinetuneResult:
    """Fine-tune ``(student_g, student_d)`` in place for ``steps`` steps.

    :param student_g: pruned generator (B, C_in, H, W) -> (B, C_out, H, W), on ``device``.
    :param student_d: pruned conditional D, on ``device``.
    :param teacher_g: frozen teacher generator (eval mode, on ``device``) for distillation and L_kde.
    :param phi: feature map of the KDE term (:func:`make_feature_map`).
    :param data: training pairs (never the reward or test split).
    :param cfg: ``finetune`` and ``reward.kde`` sections are read.
    :param steps: optimisation steps.
    :param seed: seeds batches, perturbations and dropout.
    :param lr: Adam's initial learning rate (None: ``finetune.lr``; the search passes ``finetune.search_lr``).
    :returns: the losses per step; ``diverged`` when a loss became NaN/inf.
    """
    fc = cfg.finetune
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    student_g.train()
    student_d.train()
    opt_g, opt_d = adam_pair(student_g, student_d, fc.lr if lr is None else lr, fc.beta1)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / steps)) for opt in (opt_g, opt_d)] \
        if fc.lr_decay and steps > 0 else []
    step = AdversarialStep(student_g, student_d, opt_g, opt_d, GANLoss(cfg.teacher.gan_mode).to(device), fc.lambda_l1,
                           family_of(cfg))
    result = FinetuneResult()
    batches = training_batches(data, fc.batch_size, seed)
    for i in range(steps):
        item = next(batches)
        real_a, real_b = item["A"].to(device), item["B"].to(device)
        with torch.no_grad():
            target = teacher_g(real_a)

        def extra(fake_b: torch.Tensor) -> torch.Tensor:
            loss = fc.lambda_distill * nn.functional.l1_loss(fake_b, target)
            if fc.w_kde > 0 and i % fc.kde_every == 0:
                loss = loss + fc.w_kde * kde_loss(student_g, teacher_g, phi, real_a, cfg, seed + i)
            return loss

        losses = step(real_a, real_b, extra)
        for schedule in schedules:
            schedule.step()
        result.steps = i + 1
        result.d_losses.append(losses["d"])
        result.g_adv_losses.append(losses["g_gan"])
        if not all(math.isfinite(v) for v in losses.values()):
            result.diverged = True
            break
    result.seconds = time.perf_counter() - t0
    return result
