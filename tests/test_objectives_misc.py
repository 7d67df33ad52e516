"""Balance statistic and GAN losses (DESIGN.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from collabprune.objectives import GANLoss, balance_rho, balance_term, tail_mean


def test_rho_uses_last_fifth_of_steps() -> None:
    d = [10.0] * 80 + [2.0] * 20
    g = [1.0] * 80 + [4.0] * 20
    assert balance_rho(d, g) == pytest.approx(0.5)
    assert balance_rho(d, g, tail_fraction=1.0) == pytest.approx((800 + 40) / 100 / ((80 + 80) / 100))


def test_tail_has_at_least_one_step() -> None:
    assert tail_mean([5.0, 1.0, 3.0]) == 3.0  # ceil(0.2 * 3) = 1 step
    assert tail_mean([9.0] * 5 + [1.0, 3.0]) == 2.0  # ceil(0.2 * 7) = 2 steps
    assert balance_rho([0.7], [0.35]) == pytest.approx(2.0)


def test_balance_term() -> None:
    assert balance_term(0.8, 0.8) == 0.0
    assert balance_term(balance_rho([1.0] * 10, [2.0] * 10), 0.5) == 0.0
    assert balance_term(2.0, 1.0) == pytest.approx(math.log(2))
    assert balance_term(0.5, 1.0) == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    "d,g,match",
    [
        ([], [1.0], "empty"),
        ([1.0], [], "empty"),
        ([0.0, 0.0], [1.0, 1.0], "> 0"),
        ([1.0], [-1.0], "> 0"),
        ([1.0, float("nan")], [1.0, 1.0], "non-finite"),
    ],
)
def test_rho_errors(d: list[float], g: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        balance_rho(d, g)


def test_balance_term_errors() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rho"):
            balance_term(bad, 1.0)
        with pytest.raises(ValueError, match="rho"):
            balance_term(1.0, bad)
    with pytest.raises(ValueError, match="tail_fraction"):
        balance_rho([1.0], [1.0], tail_fraction=0.0)


def test_gan_loss_vanilla_and_lsgan() -> None:
    pred = torch.randn(2, 1, 5, 5)
    bce = nn.BCEWithLogitsLoss()
    assert torch.allclose(GANLoss("vanilla")(pred, True), bce(pred, torch.ones_like(pred)))
    assert torch.allclose(GANLoss("vanilla")(pred, False), bce(pred, torch.zeros_like(pred)))
    assert torch.allclose(GANLoss("lsgan")(pred, True), ((pred - 1) ** 2).mean())
    assert torch.allclose(GANLoss("lsgan")(pred, False), (pred**2).mean())
    assert torch.allclose(GANLoss("lsgan", target_real=0.9)(pred, True), ((pred - 0.9) ** 2).mean())
    assert GANLoss("vanilla").state_dict() == {}  # labels are not checkpointed
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("wgangp")  # type: ignore[arg-type]


def test_gan_loss_gradient() -> None:
    pred = torch.zeros(3, 1, 4, 4, requires_grad=True)
    GANLoss("vanilla")(pred, True).backward()
    assert pred.grad is not None and (pred.grad < 0).all()


def _toy_pair(seed: int = 0, n: int = 5) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small conditional PatchGAN-like D (6 -> 1 channels) and (N, 3, 8, 8) inputs, outputs, targets."""
    gen = torch.Generator().manual_seed(seed)
    net_d = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, padding=1))
    a, fake, real = (torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1 for _ in range(3))
    return net_d, a, fake, real


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, b], 1)


@pytest.mark.parametrize("gan_mode", ["vanilla", "lsgan"])
def test_adversarial_pull_is_the_ratio_of_the_two_gradient_norms(gan_mode: str) -> None:
    """pull = |d L_GAN / d y| / |d lambda L1 / d y| over the whole split, whatever the chunking; the L1
    gradient's norm is lambda * sqrt(n) / n for n output values (no ties)."""
    from collabprune.objectives import adversarial_pull

    net_d, a, fake, real = _toy_pair()
    loss = GANLoss(gan_mode)
    y = fake.clone().requires_grad_(True)
    grad_gan, = torch.autograd.grad(loss(net_d(_cat(a, y)), True), y)
    n = fake.numel()
    expected = float(grad_gan.norm()) / (100.0 * math.sqrt(n) / n)
    for chunk in (1, 2, 16):
        assert adversarial_pull(net_d, _cat, a, fake, real, loss, 100.0, chunk=chunk) == pytest.approx(expected, rel=1e-5)
    # half the L1 weight, twice the pull; no parameter gradient is left behind
    assert adversarial_pull(net_d, _cat, a, fake, real, loss, 50.0) == pytest.approx(2 * expected, rel=1e-5)
    assert all(p.grad is None for p in net_d.parameters())


def test_adversarial_pull_is_zero_without_a_gradient_from_d_and_refuses_bad_input() -> None:
    from collabprune.objectives import adversarial_pull

    net_d, a, fake, real = _toy_pair()
    with torch.no_grad():
        net_d[2].weight.zero_()  # D's output no longer depends on its input
    assert adversarial_pull(net_d, _cat, a, fake, real, GANLoss("vanilla"), 100.0) == 0.0
    with pytest.raises(ValueError, match="lambda_l1=0 must be > 0"):
        adversarial_pull(net_d, _cat, a, fake, real, GANLoss("vanilla"), 0.0)
    with pytest.raises(ValueError, match="matching inputs"):
        adversarial_pull(net_d, _cat, a[:2], fake, real, GANLoss("vanilla"), 100.0)
    with pytest.raises(ValueError, match="chunk=0 must be >= 1"):
        adversarial_pull(net_d, _cat, a, fake, real, GANLoss("vanilla"), 100.0, chunk=0)
