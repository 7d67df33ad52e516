"""Ground-truth image metrics of a paired task: L1, PSNR and SSIM (DESIGN.md §4.1).

PSNR and SSIM come from scikit-image (``skimage.metrics``), computed per image on [0, 1] RGB and
averaged over images; L1 is the mean absolute error in the generators' [-1, 1] units (pix2pix's
L1). These metrics share no weights with anything the fine-tuning or the reward uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["PairedScores", "paired_scores"]


@dataclass(frozen=True)
class PairedScores:
    """Mean ground-truth metrics over a set of images.

    :param l1: mean absolute error, [-1, 1] image units (lower is better).
    :param psnr: peak signal-to-noise ratio in dB on [0, 1] images (higher is better).
    :param ssim: structural similarity (Wang et al. 2004, Gaussian window sigma 1.5, as in the paper),
        in [-1, 1] (higher is better).
    :param images: number of images averaged.
    """

    l1: float
    psnr: float
    ssim: float
    images: int

    def to_dict(self) -> dict[str, float]:
        """Plain data (``l1``, ``psnr``, ``ssim``, ``images``)."""
        return asdict(self)


def paired_scores(fake: torch.Tensor, real: torch.Tensor) -> PairedScores:
    """L1, PSNR and SSIM of generated images against their ground truth.

    :param fake: generated images (N, C, H, W) in [-1, 1] (C = 1 or 3).
    :param real: ground-truth images (N, C, H, W) in [-1, 1], in the same order.
    :returns: the means over the N images.
    :raises ValueError: the shapes differ, are not 4-D, N is 0, or ``fake`` holds NaN/inf.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if fake.shape != real.shape or fake.ndim != 4 or fake.shape[0] == 0:
        raise ValueError(f"paired_scores: need two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(fake.shape)} and {tuple(real.shape)}")
    if not torch.isfinite(fake).all():
        raise ValueError("paired_scores: generated images hold NaN or inf")
    f = ((fake.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy().astype(np.float64)
    r = ((real.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy().astype(np.float64)
    l1 = float(np.mean(np.abs(f - r)) * 2.0)
    psnr, ssim = [], []
    for a, b in zip(f, r):
        psnr.append(peak_signal_noise_ratio(b, a, data_range=1.0))
        ssim.append(structural_similarity(b, a, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False))
    finite = [p for p in psnr if np.isfinite(p)]
    return PairedScores(l1=l1, psnr=float(np.mean(finite)) if finite else float("inf"),
                        ssim=float(np.mean(ssim)), images=int(fake.shape[0]))
