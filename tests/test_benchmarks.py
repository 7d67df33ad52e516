"""Benchmark helpers that compute their tables (the benchmarks themselves run outside the suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.latency import MODELS, model_config
from benchmarks.search_scale import analyse
from collabprune.records import EvaluationRecord, RoundTimes


def _record(rnd: int, slot: int, finished_at: float, evaluation_s: float) -> EvaluationRecord:
    return EvaluationRecord(round=rnd, slot=slot, round_times=RoundTimes(
        finished_at=finished_at, evaluation_s=evaluation_s, agents_s=0.1, coordination_s=0.0))


def test_search_scale_analysis_of_a_known_log() -> None:
    """Two evaluators, rounds ending every 2.5 s with 2 s evaluations: 0.5 s of each round is not evaluation."""
    records = [_record(k, s, 10.0 + 2.5 * k, 2.0) for k in range(5) for s in range(2)]
    out = analyse(records, evaluators=2)
    assert out["rounds"] == 5 and out["slots"] == 2
    assert out["steady_period_s"] == pytest.approx(2.5)
    assert out["rounds_per_hour"] == pytest.approx(3600 / 2.5)
    assert out["candidates_per_hour"] == pytest.approx(2 * 3600 / 2.5)
    assert out["evaluator_utilisation"] == pytest.approx(2.0 / 2.5)
    assert out["share_not_evaluation"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="at least 3"):
        analyse(records[:4], evaluators=2)


def test_search_scale_stand_in_takes_the_evaluator_calls(tmp_path: Path) -> None:
    """The stand-in evaluator takes the calls the pool makes of the real one (same parameters as
    CandidateEvaluator's), and its uniform candidate follows the generator budget it is asked for."""
    import inspect

    from benchmarks._shared import DEFAULT_CONFIG, load_cfg
    from benchmarks.search_scale import SleepEvaluator
    from collabprune.evaluation import CandidateEvaluator

    for name in ("space_digests", "uniform_ratios", "evaluate_teacher", "evaluate", "evaluate_uniform"):
        assert (list(inspect.signature(getattr(SleepEvaluator, name)).parameters)
                == list(inspect.signature(getattr(CandidateEvaluator, name)).parameters)), name
    stand_in = SleepEvaluator(load_cfg(str(DEFAULT_CONFIG), []), tmp_path, sleep_s=0.0)
    for budget in (0.5, 0.1):
        out = stand_in.evaluate_uniform(0, None, budget)
        assert 0.98 * budget <= out.metrics.g_macs_fraction <= budget


@pytest.mark.parametrize("which", ["config", *MODELS])
def test_latency_models_load_on_the_default_config(which: str) -> None:
    """Every ``benchmarks.latency --model`` entry is a valid config on top of configs/demo.yaml (the
    CycleGAN ResNet needs the unpaired layout), and its budget is a MACs fraction."""
    import argparse

    from benchmarks._shared import DEFAULT_CONFIG

    args = argparse.Namespace(config=str(DEFAULT_CONFIG), overrides=[])
    cfg = model_config(args, which)
    assert isinstance(cfg.pruning.budget.generator, float) and cfg.pruning.latency_model is None
    if which != "config":
        assert cfg.model.net_g == which and cfg.model.ngf == 64 and cfg.data.crop_size == 256
