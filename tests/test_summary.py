"""The held-out summary's verdict: the noise floor of a paired difference over few final seeds."""

from __future__ import annotations

import math
import statistics

import pytest

from collabprune.summary import Verdict, noise_floor


def test_noise_floor_is_never_below_the_final_seed_spread_of_the_candidates() -> None:
    """Two seeds that move uniform and best alike give paired differences with std ~0; the floor is then
    the candidates' own final-seed spread, so an improvement is not called hundreds of times the noise."""
    uniform, best = [0.0970, 0.0985], [0.0885, 0.0900]
    diffs = [u - b for u, b in zip(uniform, best)]
    assert statistics.stdev(diffs) < 1e-12
    assert noise_floor(diffs, uniform, best) == pytest.approx(math.sqrt((statistics.stdev(uniform) ** 2
                                                                         + statistics.stdev(best) ** 2) / 2))
    verdict = Verdict("l1", statistics.fmean(diffs), noise_floor(diffs, uniform, best), [0, 1], False)
    assert verdict.beats_uniform
    assert "noise floor 0.0011, so 8.0x the noise" in verdict.sentence()
    # differences that disagree more than the candidates spread: their std is the floor
    diffs = [0.001, 0.005]
    assert noise_floor(diffs, [0.1, 0.1], [0.099, 0.095]) == pytest.approx(statistics.stdev(diffs))
    assert noise_floor([0.002], [0.1], [0.098]) == 0.0


def test_an_improvement_inside_the_floor_is_no_difference() -> None:
    uniform, best = [0.100, 0.104], [0.099, 0.1025]
    diffs = [u - b for u, b in zip(uniform, best)]
    verdict = Verdict("l1", statistics.fmean(diffs), noise_floor(diffs, uniform, best), [0, 1], False)
    assert not verdict.beats_uniform
    assert verdict.sentence().endswith("within the noise, no difference.")
