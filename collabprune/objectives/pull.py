"""Adversarial pull: how hard a pruned D steers its G away from the ground truth (paired data).

In pix2pix fine-tuning G descends ``L_GAN(D(x, G(x)), real) + lambda_l1 * L1(G(x), y)`` (Isola et al. 2017,
Eq. 4). At G's outputs ``g = G_s(x)`` on the reward split, with D_s in eval mode,

    pull = || d L_GAN(D_s(x, g), real) / d g ||_2  /  || d (lambda_l1 * L1(g, y)) / d g ||_2,

both losses being means over the split (PatchGAN logits and pixels). ``pull`` is the size of the
adversarial update relative to the reconstruction update: 0 when D gives G no gradient, 1 when the two
are equally strong. A discriminator that keeps its deep layers wide pulls harder, and over a longer
final fine-tuning that pull moves G away from the L1 optimum the held-out metrics reward
(``benchmarks/d_allocation.py``; README, "The adversarial pull"). The L1 gradient's norm is
``lambda_l1 * sqrt(m) / m`` for ``m`` output values, none equal to its target, so ``pull`` is the
adversarial gradient's norm in units of the L1 gradient's.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from collabprune.objectives.losses import GANLoss

__all__ = ["adversarial_pull"]


def adversarial_pull(
    net_d: nn.Module,
    d_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real_a: torch.Tensor,
    fake_b: torch.Tensor,
    real_b: torch.Tensor,
    gan_loss: GANLoss,
    lambda_l1: float,
    chunk: int = 16,
) -> float:
    """The adversarial pull of ``net_d`` on the outputs ``fake_b`` (module docstring).

    ``net_d`` must be in eval mode: in train mode its BatchNorm layers would normalise each chunk by
    its own statistics (and update their running ones). The mode is not changed here; no parameter
    gradient is kept.

    :param net_d: the pruned discriminator, in eval mode.
    :param d_input: what D sees for an input and a B image (:meth:`Family.d_input`).
    :param real_a: (N, C_in, H, W) G's inputs.
    :param fake_b: (N, C_out, H, W) G's outputs for ``real_a`` (detached inside).
    :param real_b: (N, C_out, H, W) the ground truth.
    :param gan_loss: the GAN objective (``teacher.gan_mode``), on the inputs' device.
    :param lambda_l1: the weight of the L1 term in fine-tuning (``finetune.lambda_l1``), > 0.
    :param chunk: images per D forward (>= 1); with D in eval mode the result does not depend on it.
    :returns: pull >= 0 (dimensionless); ``nan`` when a gradient is not finite.
    :raises ValueError: empty or mismatched batches, ``lambda_l1 <= 0`` or ``chunk < 1``.
    """
    n = len(fake_b)
    if n == 0 or len(real_a) != n or real_b.shape != fake_b.shape:
        raise ValueError(f"adversarial_pull: need N >= 1 matching inputs, outputs and targets; got "
                         f"{tuple(real_a.shape)}, {tuple(fake_b.shape)}, {tuple(real_b.shape)}")
    if lambda_l1 <= 0:
        raise ValueError(f"adversarial_pull: lambda_l1={lambda_l1:g} must be > 0 (no L1 term, no pull to compare)")
    if chunk < 1:
        raise ValueError(f"adversarial_pull: chunk={chunk} must be >= 1")
    gan_sq = l1_sq = 0.0
    for i in range(0, n, chunk):
        # each loss is a mean over the whole split; a chunk's share of it is its mean times len/n
        share = len(fake_b[i:i + chunk]) / n
        g = fake_b[i:i + chunk].detach().clone().requires_grad_(True)
        loss = share * gan_loss(net_d(d_input(real_a[i:i + chunk], g)), True)
        grad_gan, = torch.autograd.grad(loss, g)
        g_l1 = fake_b[i:i + chunk].detach().clone().requires_grad_(True)
        grad_l1, = torch.autograd.grad(share * lambda_l1 * nn.functional.l1_loss(g_l1, real_b[i:i + chunk]), g_l1)
        gan_sq += float(grad_gan.square().sum())
        l1_sq += float(grad_l1.square().sum())
    if not (math.isfinite(gan_sq) and math.isfinite(l1_sq)) or l1_sq == 0.0:
        return math.nan
    return math.sqrt(gan_sq / l1_sq)
