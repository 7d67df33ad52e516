"""Held-out metrics (DESIGN.md §4.1): L1/PSNR/SSIM on known images, the evaluation-only feature network."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from collabprune.metrics.eval_net import EvalFeatureNet, fd_eval, load_or_train_eval_net, train_eval_net
from collabprune.metrics.image_quality import paired_scores


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False) * 2 - 1).clamp(-1, 1)


def test_paired_scores_known_values() -> None:
    real = _images()
    same = paired_scores(real, real)
    assert same.l1 == 0.0 and math.isinf(same.psnr) and same.ssim == pytest.approx(1.0)
    # a constant offset of 0.2 in [-1, 1] units = 0.1 in [0, 1]: L1 0.2, PSNR = 10 log10(1 / 0.1^2) = 20 dB
    real_mid = real * 0.5  # keep away from the clamp
    out = paired_scores(real_mid + 0.2, real_mid)
    assert out.l1 == pytest.approx(0.2, abs=1e-6)
    assert out.psnr == pytest.approx(20.0, abs=1e-4)
    assert 0.0 < out.ssim < 1.0 and out.images == 4
    # worse images score worse on every metric
    noisy = (real_mid + 0.3 * torch.randn_like(real_mid, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    bad = paired_scores(noisy, real_mid)
    assert bad.l1 > 0.1 and bad.psnr < out.psnr and bad.ssim < out.ssim


def test_paired_scores_rejects_bad_input() -> None:
    real = _images()
    with pytest.raises(ValueError, match="one shape"):
        paired_scores(real[:2], real)
    with pytest.raises(ValueError, match="NaN"):
        paired_scores(torch.full_like(real, float("nan")), real)


def test_ssim_matches_the_definition_on_a_flat_pair() -> None:
    """Two flat images of means a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (Wang et al. 2004, eq. 13)."""
    a, b = 0.25, 0.75  # in [0, 1]
    fake = torch.full((1, 3, 16, 16), a * 2 - 1)
    real = torch.full((1, 3, 16, 16), b * 2 - 1)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert paired_scores(fake, real).ssim == pytest.approx(expected, rel=1e-6)


def test_eval_net_learns_its_task_and_separates_plausible_from_implausible(tmp_path: Path) -> None:
    """Trained on images with structure and colour, the network predicts rotation x permutation well
    above chance on held-out images; in its feature space the distance of a set of images to itself
    is ~0 and much smaller than to colour-swapped or rotated copies."""
    g = torch.Generator().manual_seed(0)
    n = 48
    y = torch.linspace(-1, 1, 32).view(1, 1, 32, 1).expand(n, 1, 32, 32)
    x = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(n, 1, 32, 32)
    phase = torch.rand(n, 1, 1, 1, generator=g)
    red = (0.8 * torch.ones_like(y)) - 0.2 * torch.sin(6 * x + phase)
    green = 0.6 * y + 0.1 * torch.cos(4 * x)
    blue = -0.7 * torch.ones_like(y) + 0.2 * phase
    images = torch.cat([red, green, blue], 1).clamp(-1, 1)  # "sky" gradient top to bottom, red dominant
    net = train_eval_net(images[:32], seed=0, steps=150, batch_size=16)
    from collabprune.metrics.eval_net import _transform

    labels = torch.arange(24) % net.classes
    held = images[32:].repeat(2, 1, 1, 1)[:24]
    with torch.no_grad():
        acc = (net.logits(_transform(held, labels)).argmax(1) == labels).float().mean().item()
    assert acc > 3.0 / net.classes  # chance is 1/24
    swapped = images[32:][:, [2, 0, 1]]
    rotated = torch.rot90(images[32:], 1, dims=(2, 3))
    assert fd_eval(net, images[32:], images[32:]) < 1e-6
    assert fd_eval(net, swapped, images[32:]) > 10 * fd_eval(net, images[32:40], images[40:]) + 1e-3
    assert fd_eval(net, rotated, images[32:]) > fd_eval(net, images[32:40], images[40:])
    # cached by content: the second call loads the same weights without training
    a = load_or_train_eval_net(images[:32], tmp_path, steps=5)
    files = list(tmp_path.glob("eval_net_*.pt"))
    b = load_or_train_eval_net(images[:32], tmp_path, steps=5)
    assert len(files) == 1 and all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert isinstance(b, EvalFeatureNet) and not any(p.requires_grad for p in b.parameters())
    assert np.isfinite(fd_eval(b, images[:8], images[8:16]))
