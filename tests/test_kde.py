"""KDE local-density objective (DESIGN.md §4): exactness, monotonicity, gradients, stability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from collabprune.objectives import (
    kde_objective,
    make_neighbourhoods,
    median_bandwidth,
    pixel_features,
    teacher_d_features,
)


def _kde_density(points: np.ndarray, h: float, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE (bandwidth h) of ``points (K, d)`` evaluated at ``grid (..., d)``."""
    d = points.shape[1]
    sq = ((grid[..., None, :] - points) ** 2).sum(-1)
    return np.exp(-sq / (2 * h * h)).mean(-1) / (2 * math.pi * h * h) ** (d / 2)


# ------------------------------------------------------------------------------------------------
# neighbourhoods and bandwidth
# ------------------------------------------------------------------------------------------------


def test_neighbourhoods_layout_and_determinism() -> None:
    ramp = torch.linspace(-0.2, 0.2, 12).view(1, 1, 1, 12)
    x = (torch.tensor([-0.6, 0.0, 0.6]).view(3, 1, 1, 1) + ramp).expand(3, 2, 10, 12).contiguous()
    a = make_neighbourhoods(x, 4, 0.05, 2, torch.Generator().manual_seed(7))
    b = make_neighbourhoods(x, 4, 0.05, 2, torch.Generator().manual_seed(7))
    c = make_neighbourhoods(x, 4, 0.05, 2, torch.Generator().manual_seed(8))
    assert a.shape == (12, 2, 10, 12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    # row b*K + j is a perturbation of centre b: closest centre is b
    dist = ((a[:, None] - x[None]) ** 2).flatten(2).mean(-1)  # (12, 3)
    assert torch.equal(dist.argmin(1), torch.arange(3).repeat_interleave(4))
    # no noise, no jitter: exact copies
    same = make_neighbourhoods(x, 2, 0.0, 0, torch.Generator().manual_seed(0))
    assert torch.equal(same, x.repeat_interleave(2, 0))
    # jitter only: each row is an integer shift of its centre (interior pixels equal)
    x = torch.rand(3, 2, 10, 12) * 2 - 1
    shifted = make_neighbourhoods(x, 5, 0.0, 1, torch.Generator().manual_seed(1))
    for i in range(shifted.shape[0]):
        centre = x[i // 5]
        ok = any(
            torch.equal(shifted[i, :, 1:-1, 1:-1], centre[:, 1 + dy : centre.shape[1] - 1 + dy, 1 + dx : centre.shape[2] - 1 + dx])
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )
        assert ok
    with pytest.raises(ValueError):
        make_neighbourhoods(x, 0, 0.1, 1, torch.Generator())


def test_median_bandwidth() -> None:
    t = torch.tensor([[[0.0], [1.0], [3.0]], [[0.0], [0.0], [0.0]]])  # distances 1, 3, 2 -> 2; zeros
    h = median_bandwidth(t)
    assert h[0].item() == pytest.approx(2.0)
    assert 0 < h[1].item() < 1e-3  # guarded away from zero
    t4 = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]])  # 1,3,7,2,6,4 -> median (3+4)/2
    assert median_bandwidth(t4)[0].item() == pytest.approx(3.5)


# ------------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------------


def test_zero_for_identical_features() -> None:
    t = torch.randn(4, 8, 32)
    assert kde_objective(t, t.clone()).item() == 0.0
    assert kde_objective(t, t.clone(), keep_constant=True).item() == 0.0


def test_grows_with_student_perturbation() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 8, 64, generator=g)
    direction = torch.randn(6, 8, 64, generator=g)
    h = median_bandwidth(t).mean().item()
    values = [kde_objective(t, t + level * h * direction / 8.0).item() for level in (0.1, 0.5, 2.0)]
    assert 0 < values[0] < values[1] < values[2] <= 2.0


def test_gradients_reach_student_parameters() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(10, 16), nn.Tanh())
    student = nn.Sequential(nn.Linear(10, 16), nn.Tanh())
    x = torch.randn(3 * 5, 10)
    with torch.no_grad():
        t = teacher(x).view(3, 5, 16)
    loss = kde_objective(t, student(x).view(3, 5, 16))
    loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    # one gradient step on L_kde reduces it
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before = loss.item()
    opt.step()
    assert kde_objective(t, student(x).view(3, 5, 16)).item() < before


def test_equals_integral_1d() -> None:
    g = torch.Generator().manual_seed(3)
    t = torch.randn(2, 6, 1, generator=g, dtype=torch.float64)
    s = t + 0.7 * torch.randn(2, 6, 1, generator=g, dtype=torch.float64) + 0.3
    ours = kde_objective(t, s, keep_constant=True).item()
    h = median_bandwidth(t).numpy()
    integrals = []
    for b in range(2):
        tb, sb = t[b].numpy(), s[b].numpy()
        lo, hi = min(tb.min(), sb.min()) - 10 * h[b], max(tb.max(), sb.max()) + 10 * h[b]
        grid = np.linspace(lo, hi, 20001)[:, None]
        diff = _kde_density(tb, h[b], grid) - _kde_density(sb, h[b], grid)
        integrals.append(np.trapezoid(diff**2, grid[:, 0]))
    ref = float(np.mean(integrals))
    assert ours == pytest.approx(ref, rel=0.01)


def test_equals_integral_2d() -> None:
    g = torch.Generator().manual_seed(4)
    t = torch.randn(1, 5, 2, generator=g, dtype=torch.float64)
    s = t + 0.5 * torch.randn(1, 5, 2, generator=g, dtype=torch.float64)
    ours = kde_objective(t, s, keep_constant=True).item()
    h = float(median_bandwidth(t)[0])
    pts = np.concatenate([t[0].numpy(), s[0].numpy()])
    lo, hi = pts.min(0) - 8 * h, pts.max(0) + 8 * h
    xs, ys = np.linspace(lo[0], hi[0], 401), np.linspace(lo[1], hi[1], 401)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1)
    diff = _kde_density(t[0].numpy(), h, grid) - _kde_density(s[0].numpy(), h, grid)
    ref = float(np.trapezoid(np.trapezoid(diff**2, ys, axis=1), xs))
    assert ours == pytest.approx(ref, rel=0.01)


def test_high_dimensional_is_finite_and_bounded() -> None:
    g = torch.Generator().manual_seed(5)
    centres = 4.0 * torch.randn(8, 1, 512, generator=g)
    t = centres + 0.8 * torch.randn(8, 8, 512, generator=g)  # D-feature-like scale
    for noise in (0.05, 0.5, 5.0, 500.0):
        s = t + noise * torch.randn(8, 8, 512, generator=g)
        val = kde_objective(t, s.requires_grad_())
        assert torch.isfinite(val) and 0 < val.item() <= 2.0
        val.backward()
        assert torch.isfinite(s.grad).all()
    # a far-away student: the cross term vanishes, L = mean k(T,T) + mean k(S,S) = 2 mean k(T,T)
    far = kde_objective(t, t + 1e4).item()
    h = median_bandwidth(t).view(-1, 1, 1)
    k_tt = torch.exp(-torch.cdist(t, t).pow(2) / (4 * h * h)).mean(dim=(1, 2)).mean().item()
    assert far == pytest.approx(2 * k_tt, rel=1e-4) and 1.0 < far <= 2.0


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        kde_objective(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError):
        median_bandwidth(torch.zeros(2, 1, 4))


# ------------------------------------------------------------------------------------------------
# feature maps
# ------------------------------------------------------------------------------------------------


class _TinyD(nn.Module):
    """NLayerDiscriminator-shaped: ``self.model`` Sequential ending in a 1-channel conv head."""

    def __init__(self, in_ch: int = 6) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_ch, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 1, 1),
            nn.BatchNorm2d(16), nn.LeakyReLU(0.2), nn.Conv2d(16, 1, 4, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_pixel_features() -> None:
    x = torch.rand(3, 3, 64, 48)
    f = pixel_features(x)
    assert f.shape == (3, 3 * 16 * 16)
    assert torch.allclose(f.view(3, 3, 16, 16).mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)


def test_teacher_d_features() -> None:
    torch.manual_seed(0)
    d = _TinyD().eval().requires_grad_(False)
    inputs = torch.rand(4, 3, 32, 32) * 2 - 1
    outputs = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_()
    f = teacher_d_features(d, inputs, outputs)
    assert f.shape == (4, 16)
    f.sum().backward()
    assert outputs.grad is not None and outputs.grad.abs().sum() > 0
    assert teacher_d_features(_TinyD(3).eval(), None, outputs.detach()).shape == (4, 16)
    bad = _TinyD()
    bad.model = nn.Sequential(nn.Conv2d(6, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="1-channel"):
        teacher_d_features(bad, inputs, outputs)
    with pytest.raises(ValueError, match=r"\.model"):
        teacher_d_features(nn.Conv2d(6, 1, 3), inputs, outputs)
