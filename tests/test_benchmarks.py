"""Benchmark helpers that compute their tables (the benchmarks themselves run outside the suite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _quality_file(path: Path, runs: list[tuple[float, str, int, list[float], list[float]]]) -> Path:
    path.write_text(json.dumps({"runs": [
        {"budget": b, "method": m, "seed": s, "finalist": {"g_ratios": g, "d_ratios": d}, "heldout": []}
        for b, m, s, g, d in runs]}))
    return path


def test_finalists_panel_holds_each_searched_pair_at_the_budget_once(tmp_path: Path) -> None:
    """``proxy_fidelity --panel finalists``: uniform first, then the searched finalists at the budget; a
    uniform run, another budget and a pair seen before are skipped; a name taken by another file gets its stem."""
    from benchmarks.proxy_fidelity import FinalistsError, finalists_panel, read_finalists

    g1, g2, g3, d = [0.75, 0.125], [0.5, 0.25], [0.25, 0.5], [0.5, 0.5]
    a = _quality_file(tmp_path / "a.json", [(0.1, "uniform", 0, [0.3, 0.3], d), (0.1, "random", 0, g1, d),
                                            (0.1, "collab", 0, g2, d), (0.25, "collab", 1, g3, d),
                                            (0.1, "collab", 1, g1, d)])
    b = _quality_file(tmp_path / "b.json", [(0.1, "collab", 0, g3, d)])
    other = tmp_path / "other"
    other.mkdir()
    b2 = _quality_file(other / "b.json", [(0.1, "collab", 0, [0.125, 0.75], d)])
    sources = [("a", read_finalists(a)), ("b", read_finalists(b)), ("b", read_finalists(b2))]
    members = finalists_panel(sources, 0.1, ([0.3, 0.3], d), 2, 2)
    assert list(members) == ["uniform", "random_s0", "collab_s0", "collab_s0@b", "collab_s0@b#2"]
    assert members["random_s0"] == (g1, d) and members["collab_s0@b"] == (g3, d)
    assert members["collab_s0@b#2"] == ([0.125, 0.75], d)
    with pytest.raises(FinalistsError, match="has 2 G / 2 D ratios; the config.s networks have 3 / 2 groups"):
        finalists_panel(sources, 0.1, ([0.3, 0.3], d), 3, 2)
    with pytest.raises(FinalistsError, match="no searched finalist other than the uniform pair at budget 0.5"):
        finalists_panel(sources, 0.5, ([0.3, 0.3], d), 2, 2)


def test_finalists_files_that_are_not_quality_results_stop_with_exit_2(tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    """Bad ``--finalists`` input is one line naming the file and exit code 2, before anything is evaluated."""
    import sys

    from benchmarks import proxy_fidelity

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"results": []}')
    (tmp_path / "run.json").write_text('{"runs": [{"budget": 0.1, "method": "random"}]}')
    cases = {"bad.json": "not JSON", "other.json": "no 'runs' list", "run.json": "runs[0] is not a quality run",
             "missing.json": "No such file"}
    for name, message in cases.items():
        monkeypatch.setattr(sys, "argv", ["proxy_fidelity", "--panel", "finalists", "--finalists",
                                          str(tmp_path / name)])
        with pytest.raises(SystemExit) as exc:
            proxy_fidelity.parse_args()
        assert exc.value.code == 2
        assert message in capsys.readouterr().err.splitlines()[-1]
    monkeypatch.setattr(sys, "argv", ["proxy_fidelity", "--panel", "finalists"])
    with pytest.raises(SystemExit) as exc:
        proxy_fidelity.parse_args()
    assert exc.value.code == 2
    for bad, message in ((["--seeds", "0,x"], "numbers separated by commas"), (["--budgets", "0.1,ten"], "numbers"),
                         (["--final-seeds", ","], "at least one seed")):
        monkeypatch.setattr(sys, "argv", ["proxy_fidelity", *bad])
        with pytest.raises(SystemExit) as exc:
            proxy_fidelity.parse_args()
        assert exc.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def _scored_file(path: Path, runs: list[tuple[float, str, int, list[float]]]) -> Path:
    """A quality result file whose runs carry test L1 per final seed (and a PSNR on the first only)."""
    path.write_text(json.dumps({"runs": [
        {"budget": b, "method": m, "seed": s, "finalist": {"g_ratios": [0.5], "d_ratios": [0.5]},
         "heldout": [{"l1": v, "psnr": 20.0 if i == 0 else None} for i, v in enumerate(l1)]}
        for b, m, s, l1 in runs]}))
    return path


def test_pair_results_pairs_two_methods_across_result_files_by_seed(tmp_path: Path, capsys) -> None:
    """``benchmarks.pair_results``: per seed, each side's mean over its final seeds; A against B signed so that
    a lower L1 of A is positive; seeds on one side only are left out; a seed found in two files of one side
    counts once when its score is the same (a bit-identical rerun)."""
    from benchmarks.pair_results import main
    from benchmarks.quality import bootstrap_ci

    a1 = _scored_file(tmp_path / "a1.json", [(0.1, "collab", 0, [0.10, 0.12]), (0.1, "collab", 1, [0.09, 0.09]),
                                             (0.25, "collab", 2, [0.5, 0.5]), (0.1, "random", 0, [0.9, 0.9])])
    a2 = _scored_file(tmp_path / "a2.json", [(0.1, "collab", 1, [0.09, 0.09]), (0.1, "collab", 2, [0.14, 0.14]),
                                             (0.1, "collab", 7, [0.2, 0.2])])
    b = _scored_file(tmp_path / "b.json", [(0.1, "collab", 0, [0.13, 0.13]), (0.1, "collab", 1, [0.10, 0.10]),
                                           (0.1, "collab", 2, [0.13, 0.13])])
    out = tmp_path / "pair.json"
    payload = main([f"{a1},{a2}:collab", f"{b}:collab", "--budget", "0.1", "--out", str(out)])
    diffs = [0.13 - 0.11, 0.10 - 0.09, 0.13 - 0.14]
    assert payload["seeds"] == [0, 1, 2]
    assert payload["a"]["scores"] == {0: pytest.approx(0.11), 1: 0.09, 2: 0.14}
    comparison = payload["comparison"]
    assert comparison["mean"] == pytest.approx(sum(diffs) / 3)
    assert comparison["diffs"] == pytest.approx(diffs)
    assert comparison["ci95"] == pytest.approx(list(bootstrap_ci(comparison["diffs"])))
    assert comparison["wins"] == 2 and comparison["n"] == 3
    assert json.loads(out.read_text())["comparison"]["wins"] == 2
    assert "2/3" in capsys.readouterr().out
    # PSNR: higher is better, and only the first final seed has it
    psnr = main([f"{a1}:collab", f"{b}:collab", "--budget", "0.1", "--metric", "psnr", "--out", str(out)])
    assert psnr["comparison"]["diffs"] == [0.0, 0.0]


def test_pair_results_bad_input_stops_with_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """A spec without ``:METHOD``, a missing or foreign file, a seed scored differently in two files of one
    side, no run at the budget, no seed on both sides: one line naming the problem, exit code 2."""
    from benchmarks.pair_results import main

    a = _scored_file(tmp_path / "a.json", [(0.1, "collab", 0, [0.1, 0.1])])
    a_other = _scored_file(tmp_path / "a_other.json", [(0.1, "collab", 0, [0.1, 0.2])])
    b = _scored_file(tmp_path / "b.json", [(0.1, "random", 1, [0.2, 0.2])])
    (tmp_path / "foreign.json").write_text('{"results": []}')
    (tmp_path / "broken.json").write_text('{"runs": [{"budget": 0.1, "method": "collab"}]}')
    out = tmp_path / "pair.json"
    cases = [([str(a), f"{b}:random"], "expected FILE[,FILE...]:METHOD"),
             ([f"{tmp_path / 'missing.json'}:collab", f"{b}:random"], "No such file"),
             ([f"{tmp_path / 'foreign.json'}:collab", f"{b}:random"], "no 'runs' list"),
             ([f"{tmp_path / 'broken.json'}:collab", f"{b}:random"], "runs[0] is not a quality run"),
             ([f"{a},{a_other}:collab", f"{b}:random"], "collab seed 0 at budget 0.1 scores"),
             ([f"{a}:tpe", f"{b}:random"], "no tpe run at budget 0.1"),
             ([f"{a}:collab", f"{b}:random"], "no search seed on both sides (A: [0], B: [1])")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--budget", "0.1", "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not out.exists()


def _learned_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A quality result at 0.1 (uniform and three collab finalists) and two of the collab searches' logs."""
    import benchmarks.quality as quality

    monkeypatch.setattr(quality, "LOGS_DIR", tmp_path / "quality_logs")
    finalists = {("uniform", 0): ([0.5, 0.5], [0.5, 0.5]), ("collab", 0): ([1.0, 0.25], [0.75, 0.25]),
                 ("collab", 1): ([0.5, 0.5], [0.5, 0.75]), ("collab", 2): ([0.5, 0.5], [0.5, 0.5])}
    results = tmp_path / "quality.json"
    results.write_text(json.dumps({"runs": [
        {"budget": 0.1, "method": m, "seed": s, "finalist": {"g_ratios": g, "d_ratios": d}, "heldout": []}
        for (m, s), (g, d) in finalists.items()]}))
    logs = tmp_path / "quality_logs_t"
    logs.mkdir()
    # (round, reward, last D ratio): seed 0 gains 0.5 and narrows D's last group, seed 1 loses 0.2
    for seed, rounds in ((0, [(0, -1.0, 0.5), (1, -1.0, 0.5), (2, -9.0, 0.5), (4, -0.5, 0.25), (5, -0.5, 0.25)]),
                         (1, [(0, -1.0, 0.75), (1, -1.0, 0.75), (4, -1.2, 0.75), (5, -1.2, 0.75)])):
        lines = [{"round": -1, "kind": "uniform", "reward": -1.05, "d_ratios": [0.5, 0.5]}]
        lines += [{"round": r, "kind": "search", "reward": v, "d_ratios": [0.5, d3]} for r, v, d3 in rounds]
        (logs / f"budget_0.1_collab_seed{seed}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return results


def test_learned_summarises_reward_gain_and_allocations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.learned``: per seed the late minus early mean search reward (rounds outside both windows
    ignored), its bootstrap interval and seeds improved; the last D group's mean keep ratio in each window;
    the finalists' G log2 multipliers on the uniform finalist's and D keep ratios (every finalist, logged or
    not)."""
    from benchmarks.learned import main
    from benchmarks.quality import bootstrap_ci

    results = _learned_fixture(tmp_path, monkeypatch)
    out = tmp_path / "learned.json"
    payload = main([str(results), "--budget", "0.1", "--tag", "t", "--early", "0:2", "--late", "4:6", "--out", str(out)])
    (row,) = payload["methods"]
    assert row["method"] == "collab" and row["seeds"] == [0, 1] and row["finalists"] == 3
    assert row["early"] == pytest.approx(-1.0) and row["late"] == pytest.approx((-0.5 - 1.2) / 2)
    assert row["gain"] == pytest.approx((0.5 - 0.2) / 2) and row["seeds_improved"] == 1
    assert list(row["gain_ci95"]) == pytest.approx(list(bootstrap_ci([0.5, -0.2])))
    assert row["d_last_early"] == pytest.approx((0.5 + 0.75) / 2) and row["d_last_late"] == pytest.approx((0.25 + 0.75) / 2)
    assert row["g_log2_multiplier"] == pytest.approx([1 / 3, -1 / 3])
    assert row["d_ratios"] == pytest.approx([(0.75 + 0.5 + 0.5) / 3, (0.25 + 0.75 + 0.5) / 3])
    assert json.loads(out.read_text())["methods"][0]["seeds_improved"] == 1
    assert "1/2" in capsys.readouterr().out


def test_learned_bad_input_stops_with_exit_2_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A method not in the file, a file without the uniform reference, a foreign file, a malformed window:
    exit code 2 with one error line, nothing written."""
    from benchmarks.learned import main

    results = _learned_fixture(tmp_path, monkeypatch)
    no_uniform = tmp_path / "no_uniform.json"
    no_uniform.write_text(json.dumps({"runs": [r for r in json.loads(results.read_text())["runs"]
                                               if r["method"] != "uniform"]}))
    (tmp_path / "foreign.json").write_text('{"results": []}')
    out = tmp_path / "learned.json"
    cases = [([str(results), "--methods", "tpe"], "--methods: ['tpe'] not in"),
             ([str(no_uniform)], "no uniform run at budget 0.1"),
             ([str(tmp_path / "foreign.json")], "no 'runs' list"),
             ([str(results), "--early", "5:2"], "expected START:END rounds")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--budget", "0.1", "--tag", "t", "--out", str(out)])
        assert exc.value.code == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not out.exists()


def test_heldout_cache_key_ignores_the_reward_but_not_the_protocol() -> None:
    """A reward lever (weights, ``w_l1``, ``w_pull``, the penalty) re-scores the proxy only: the held-out cache key of
    ``proxy_fidelity`` stays; the final fine-tuning, the ratios, the seed and the teacher's checkpoints change
    it, and so does the FID setting (the held-out FID, and unpaired data's primary metric); the KDE settings
    change it only when the fine-tuning uses the KDE loss."""
    from benchmarks._shared import DEFAULT_CONFIG, load_cfg
    from benchmarks.proxy_fidelity import heldout_key

    g, d = [0.5] * 13, [0.5] * 4

    def key(*overrides: str, ratios: list[float] = g, seed: int = 0, teacher: str = "sha-g:sha-d") -> str:
        return heldout_key(load_cfg(str(DEFAULT_CONFIG), list(overrides)), ratios, d, seed, teacher)

    base = key()
    for lever in (["reward.w_l1=3", "reward.penalty=-25"], ["reward.w_bal=0.5"], ["reward.w_pull=0.5"], ["finetune.steps=100"],
                  ["finetune.search_lr=1e-3"], ["reward.kde.neighbours=4"]):
        assert key(*lever) == base, lever
    for change in (key("finetune.final_steps=100"), key("finetune.lr=1e-3"), key(ratios=[0.25] * 13), key(seed=1), key(teacher="other:sha-d"),
                   key("reward.fid.mode=fid"),
                   key("finetune.w_kde=1", "reward.kde.neighbours=4")):
        assert change != base
    assert key("finetune.w_kde=1", "reward.kde.neighbours=4") != key("finetune.w_kde=1")


def test_d_allocation_crosses_named_gs_with_distinct_ds_and_reads_the_d_effect() -> None:
    """``benchmarks.d_allocation``: the uniform D first, each distinct D once; an unknown name is refused;
    per G the held-out spread over the Ds and the reward's Spearman with it, per D its mean difference to
    the uniform D (positive = better, test L1 lower); a pair whose final runs all diverged is left out."""
    from benchmarks.d_allocation import analyse, grid
    from benchmarks.proxy_fidelity import FinalistsError

    u, d1, d2 = [0.7, 0.7], [0.25, 1.0], [1.0, 0.5]
    members = {"uniform": ([0.3, 0.3], u), "random_s0": ([0.5, 0.2], d1), "collab_s0": ([0.7, 0.1], d2),
               "collab_s1": ([0.6, 0.15], d1)}
    gs, ds = grid(members, ["random_s0", "collab_s0"], [])
    assert gs == {"random_s0": [0.5, 0.2], "collab_s0": [0.7, 0.1]}
    assert ds == {"uniform": u, "random_s0": d1, "collab_s0": d2}
    assert list(grid(members, ["collab_s1"], ["collab_s1"])[1]) == ["uniform", "collab_s1"]
    with pytest.raises(FinalistsError, match="not a finalist at this budget: nope"):
        grid(members, ["nope"], [])
    heldout = {"random_s0": {"uniform": [0.104, 0.106], "random_s0": [0.108, 0.108], "collab_s0": [0.101, 0.103]},
               "collab_s0": {"uniform": [0.101, 0.101], "random_s0": [0.106, 0.106], "collab_s0": [0.100, 0.100]}}
    reward = {g: {"uniform": [-0.3], "random_s0": [-0.4], "collab_s0": [-0.2]} for g in heldout}
    out = analyse(heldout, reward, higher_better=False)
    assert out["per_g"]["random_s0"]["spread"] == pytest.approx(0.108 - 0.102)
    assert out["per_g"]["random_s0"]["noise"] == pytest.approx((0.001414214 + 0 + 0.001414214) / 3, rel=1e-4)
    assert (out["per_g"]["random_s0"]["best_d"], out["per_g"]["random_s0"]["worst_d"]) == ("collab_s0", "random_s0")
    assert out["per_g"]["collab_s0"]["reward_spearman"] == pytest.approx(1.0)
    assert out["per_g"]["collab_s0"]["reward_spread"] == pytest.approx(0.2)
    assert out["per_d"]["random_s0"] == {"vs_uniform_d": pytest.approx(-0.004), "better_for": 0, "n": 2}
    assert out["per_d"]["collab_s0"] == {"vs_uniform_d": pytest.approx(0.002), "better_for": 2, "n": 2}
    assert out["per_d"]["uniform"]["vs_uniform_d"] == 0.0
    heldout["collab_s0"]["random_s0"] = []  # every final run of that pair diverged
    out = analyse(heldout, reward, higher_better=False)
    assert out["per_g"]["collab_s0"]["worst_d"] == "uniform"
    assert out["per_d"]["random_s0"] == {"vs_uniform_d": pytest.approx(-0.003), "better_for": 0, "n": 1}


def test_d_allocation_bad_input_stops_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown ``--g`` name, bad seeds or an empty ``--g`` is one error line and exit code 2."""
    import sys

    from benchmarks import d_allocation

    q = _quality_file(tmp_path / "q.json", [(0.1, "random", 0, [0.5] * 13, [0.5] * 4)])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(sys, "argv", ["d_allocation", "--budget", "0.1", "--finalists", str(q), "--g", "collab_s9",
                                      "--work", str(tmp_path / "work")])
    monkeypatch.setattr(d_allocation, "CandidateEvaluator", _StubEvaluator)
    with pytest.raises(SystemExit) as exc:
        d_allocation.main()
    assert exc.value.code == 2
    assert "not a finalist at this budget: collab_s9" in capsys.readouterr().err.splitlines()[-1]
    for bad, message in ((["--seeds", "0,x"], "integers separated by commas"), (["--g", ","], "at least one entry")):
        monkeypatch.setattr(sys, "argv", ["d_allocation", "--finalists", str(q), "--g", "random_s0", *bad])
        with pytest.raises(SystemExit) as exc:
            d_allocation.parse_args()
        assert exc.value.code == 2
        assert message in capsys.readouterr().err.splitlines()[-1]


class _StubEvaluator:
    """The parts of CandidateEvaluator that the name check reads (13 G and 4 D groups, as the demo's)."""

    def __init__(self, cfg: object, run_dir: Path) -> None:
        import types

        self.g_space, self.d_space = types.SimpleNamespace(num_groups=13), types.SimpleNamespace(num_groups=4)

    def uniform_ratios(self) -> tuple[list[float], list[float]]:
        return [0.25] * 13, [0.7] * 4


def test_quality_reuses_a_cached_finalist_only_under_the_config_that_found_it(tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """``benchmarks.quality``'s finalist cache: an entry stored with this config's run digest (or with none,
    cached before the digest was stored) is reused; one found under another config is refused with one
    error line and exit code 2, not silently reused; so is a search run directory a killed run left under
    another config; bad --budgets/--seeds stop at parse time with exit code 2."""
    import sys

    from benchmarks import quality
    from benchmarks._shared import DEFAULT_CONFIG, load_cfg
    from benchmarks.quality import find_finalist
    from collabprune.runs import RunDir, run_digest

    def make_cfg(more: list[str]) -> Any:
        return load_cfg(str(DEFAULT_CONFIG), ["pruning.budget.generator=0.1", *more])

    entry = {"g_ratios": [0.5] * 13, "d_ratios": [0.5] * 4}
    path = tmp_path / "finalist_random.json"
    for stored in ({}, {"run_digest": run_digest(make_cfg([]))}):
        path.write_text(json.dumps({**entry, **stored}))
        assert find_finalist("random", make_cfg, 0.1, tmp_path, 1)["g_ratios"] == entry["g_ratios"]
    other = run_digest(make_cfg(["reward.w_pull=0.1"]))
    path.write_text(json.dumps({**entry, "run_digest": other}))
    with pytest.raises(SystemExit) as exc:
        find_finalist("random", make_cfg, 0.1, tmp_path, 1)
    assert exc.value.code == 2 and "found under another config" in capsys.readouterr().err.splitlines()[-1]
    path.unlink()
    RunDir.create(tmp_path / "search_random", make_cfg(["reward.w_pull=0.1"]))
    with pytest.raises(SystemExit) as exc:
        find_finalist("random", make_cfg, 0.1, tmp_path, 1)
    assert exc.value.code == 2 and "a search run under another config" in capsys.readouterr().err.splitlines()[-1]
    assert not path.exists()
    for bad in (["--seeds", "0,x"], ["--budgets", ","]):
        monkeypatch.setattr(sys, "argv", ["quality", *bad])
        with pytest.raises(SystemExit) as exc:
            quality.parse_args()
        assert exc.value.code == 2


def test_quality_main_pairs_the_methods_by_seed_and_resumes_from_its_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    """``python -m benchmarks.quality`` end to end on the tiny setup (uniform, inner-layer and random search;
    2 search seeds, 2 rounds, 1 final seed of 2 steps): every method's finalist meets the G budget, the
    table's paired differences are the per-seed test-L1 differences of the cached held-out results, the
    random searches' per-evaluation logs and the curves PNG are written, and the same command again
    reads everything from its cache (no evaluation, no fine-tuning) and writes the same summary. An
    unknown method stops with exit code 2 before anything runs."""
    import statistics
    import sys

    from benchmarks import quality
    from collabprune.config import save_config
    from collabprune.evaluation import CandidateEvaluator
    from collabprune.heldout import HeldoutEvaluator
    from tiny import short_eval_net, tiny_config

    cfg = tiny_config(tmp_path / "tiny", ["finetune.final_steps=2", "finetune.final_seeds=1"])
    save_config(cfg, tmp_path / "tiny.yaml")
    short_eval_net(monkeypatch)
    results = tmp_path / "results"
    monkeypatch.setattr(quality, "RESULTS_DIR", results)
    monkeypatch.setattr(quality, "LOGS_DIR", results / "quality_logs")
    out = tmp_path / "quality.json"
    argv = ["quality", str(tmp_path / "tiny.yaml"), "--budgets", "0.5", "--seeds", "0,1", "--final-seeds", "1",
            "--rounds", "2", "--methods", "inner,random", "--work", str(tmp_path / "work"), "--tag", "t",
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    first = json.loads(out.read_text())
    rows = {row["method"]: row for row in first["summary"]}
    assert first["methods"] == ["uniform", "inner", "random"] and set(rows) == {"uniform", "inner", "random"}
    for run in first["runs"]:
        assert run["final_seeds"] == [1000 * run["seed"]] and len(run["heldout"]) == 1
        assert 0.5 * 0.9 <= run["heldout"][0]["g_macs_fraction"] <= 0.5  # the tiny net's coarse groups
    l1 = {(r["seed"], r["method"]): r["heldout"][0]["l1"] for r in first["runs"]}
    for method in ("inner", "random"):
        diffs = [l1[(s, "uniform")] - l1[(s, method)] for s in (0, 1)]  # L1: lower is better
        vs = rows[method]["vs_uniform"]
        assert vs["n"] == 2 and vs["diffs"] == pytest.approx(diffs) and vs["mean"] == pytest.approx(statistics.fmean(diffs))
        assert vs["ci95"][0] <= vs["mean"] <= vs["ci95"][1] and vs["wins"] == sum(d > 0 for d in diffs)
    assert rows["inner"]["vs_random"]["diffs"] == pytest.approx([l1[(s, "random")] - l1[(s, "inner")] for s in (0, 1)])
    assert rows["random"]["l1"][0] == pytest.approx(statistics.fmean([l1[(0, "random")], l1[(1, "random")]]))
    for s in (0, 1):
        log = [json.loads(x) for x in (results / "quality_logs_t" / f"budget_0.5_random_seed{s}.jsonl").read_text().splitlines()]
        assert [x["round"] for x in log if x.get("kind") == "search"] == [0, 1]
        assert any("reeval_of" in x for x in log)
    assert (results / "quality_curves_0.5_t.png").stat().st_size > 1000

    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached run was evaluated again")

    monkeypatch.setattr(CandidateEvaluator, "evaluate", no_work)
    monkeypatch.setattr(HeldoutEvaluator, "evaluate", no_work)
    quality.main()
    again = json.loads(out.read_text())
    assert again["summary"] == first["summary"] and again["runs"] == first["runs"]

    monkeypatch.setattr(sys, "argv", [*argv[:-4], "--methods", "random,bogus", "--out", str(tmp_path / "no.json")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        quality.main()
    assert exc.value.code == 2 and "unknown ['bogus']" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "no.json").exists()


def test_search_surrogate_without_logs_of_the_budget_stops_with_exit_2(monkeypatch, capsys) -> None:
    """``benchmarks.search_surrogate --tag T``: no per-evaluation logs of the budget under that tag is one
    error line naming the folder and exit code 2, nothing fitted or written."""
    import sys

    from benchmarks import search_surrogate

    monkeypatch.setattr(sys, "argv", ["search_surrogate", "--budget", "0.37", "--tag", "no_such_tag"])
    with pytest.raises(SystemExit) as exc:
        search_surrogate.main()
    assert exc.value.code == 2
    assert "no per-evaluation logs budget_0.37_*.jsonl in" in capsys.readouterr().err.splitlines()[-1]
