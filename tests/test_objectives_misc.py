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
