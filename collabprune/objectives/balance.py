"""G-D balance statistic (DESIGN.md §4, "Balance").

rho = mean D loss / mean G adversarial loss over the last 20% of fine-tuning steps; rho_t is the same
statistic for the unpruned teacher pair under the same procedure; ``bal = |log(rho_s / rho_t)|``.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["balance_rho", "balance_term", "tail_mean"]


def tail_mean(values: Sequence[float], tail_fraction: float = 0.2, name: str = "values") -> float:
    """Mean of the last ``ceil(tail_fraction * len(values))`` entries (at least one).

    :param values: per-step losses, in step order.
    :param tail_fraction: fraction of the steps at the end to average, in (0, 1].
    :param name: what the values are, for error messages.
    :raises ValueError: when ``values`` is empty, the fraction is out of range, or a tail value is
        not finite.
    """
    if not 0.0 < tail_fraction <= 1.0:
        raise ValueError(f"tail_fraction={tail_fraction}: allowed 0 < tail_fraction <= 1")
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError(f"balance: {name} is empty (no fine-tuning steps recorded)")
    n = max(1, math.ceil(tail_fraction * len(vals) - 1e-9))
    tail = vals[-n:]
    if not all(math.isfinite(v) for v in tail):
        raise ValueError(f"balance: {name} has non-finite values in its last {n} steps (diverged)")
    return sum(tail) / n


def balance_rho(
    d_losses: Sequence[float], g_adv_losses: Sequence[float], tail_fraction: float = 0.2
) -> float:
    """rho = mean D loss / mean G adversarial loss over the last ``tail_fraction`` of the steps.

    Each sequence is averaged over its own last ``ceil(tail_fraction * len)`` steps (at least 1).

    :param d_losses: the discriminator's loss at each fine-tuning step.
    :param g_adv_losses: the generator's adversarial (GAN) loss term at each step (not L1).
    :param tail_fraction: fraction of the final steps used (DESIGN.md §4: 0.2).
    :returns: rho > 0 (dimensionless).
    :raises ValueError: empty input, non-finite tail values, or a tail mean <= 0.
    """
    d = tail_mean(d_losses, tail_fraction, "d_losses")
    g = tail_mean(g_adv_losses, tail_fraction, "g_adv_losses")
    if d <= 0 or g <= 0:
        raise ValueError(f"balance: mean D loss ({d:g}) and mean G adversarial loss ({g:g}) must be > 0")
    return d / g


def balance_term(rho_s: float, rho_t: float) -> float:
    """bal = |log(rho_s / rho_t)|: 0 when the student pair is as balanced as the teacher pair.

    :param rho_s: the pruned pair's rho (:func:`balance_rho`).
    :param rho_t: the teacher pair's rho under the same procedure.
    :returns: bal >= 0.
    :raises ValueError: when a rho is not a finite positive number.
    """
    for name, v in (("rho_s", rho_s), ("rho_t", rho_t)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"balance_term: {name}={v} must be a finite number > 0")
    return abs(math.log(rho_s / rho_t))
