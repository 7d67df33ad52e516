"""The typed evaluation record: exact round trip of the on-disk format, defaults for old lines."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import pytest

import record_lines as lines
from collabprune.records import (
    EvalTimes,
    EvaluationRecord,
    Metrics,
    ProposalInfo,
    Reeval,
    ReevalCandidate,
    ReevalRecord,
    RoundTimes,
    SeedResult,
)
from collabprune.runs import BEST_FILE, EVALUATIONS_FILE, META_FILE, REEVALUATIONS_FILE, RunDir

DEMO_DIGEST = "a9e1bb012fda6a34"
LOG_LINES = (lines.TEACHER, lines.UNIFORM, lines.SEARCH)


@pytest.mark.parametrize("line", [lines.TEACHER, lines.UNIFORM, lines.SEARCH, lines.RANDOM_SEARCH],
                         ids=["teacher", "uniform", "search", "random_search"])
def test_a_logged_line_reads_and_writes_back_identically(line: str) -> None:
    record = EvaluationRecord.from_dict(json.loads(line))
    assert record.extra == {}
    assert json.dumps(record.to_dict(), allow_nan=True) == line


def test_reeval_line_and_best_json_write_back_identically() -> None:
    reeval = ReevalRecord.from_dict(json.loads(lines.REEVAL))
    assert reeval.extra == {} and json.dumps(reeval.to_dict()) == lines.REEVAL
    best = EvaluationRecord.from_dict(json.loads(lines.BEST_JSON))
    assert best.reeval is not None and best.reeval.extra == {}
    assert json.dumps(best.to_dict(), indent=2) + "\n" == lines.BEST_JSON


def test_typed_values_of_real_lines() -> None:
    teacher, uniform, search = (EvaluationRecord.from_dict(json.loads(x)) for x in LOG_LINES)
    assert (teacher.round, teacher.kind, teacher.reward, teacher.reward_terms) == (-2, "teacher", None, {})
    assert teacher.metrics.fd_metric == "fd_teacher_d" and teacher.metrics.fd == pytest.approx(9.47761533361451)
    assert teacher.metrics.fid is None and teacher.metrics.g_macs == 101187584 and teacher.metrics.bal == 0.0
    assert isinstance(teacher.times, EvalTimes) and teacher.times.total_s == pytest.approx(12.737083431000428)
    assert uniform.seed_results is not None and [s.seed for s in uniform.seed_results] == [0, 1]
    assert isinstance(uniform.seed_results[1], SeedResult) and uniform.seed_results[1].metrics.l_kde > 0
    assert (search.round, search.slot, search.kind) == (0, 1, "search")
    assert search.proposal("g") is not None and search.proposal("g").macs_fraction == search.metrics.g_macs_fraction
    assert len(search.proposal("d").actions) == len(search.d_ratios) == len(search.ratios("d"))
    assert isinstance(search.round_times, RoundTimes) and search.round_times.evaluation_s == pytest.approx(9.610420227050781)
    assert search.finite_reward == search.reward < 0 and not search.diverged
    random = EvaluationRecord.from_dict(json.loads(lines.RANDOM_SEARCH))
    assert random.proposal("g").requested is None and random.round_times is None
    best = EvaluationRecord.from_dict(json.loads(lines.BEST_JSON))
    assert best.reeval.candidates[0].round == -1 and best.reeval.reward == pytest.approx(-0.40989233757966115)


def test_run_dir_loads_old_files_and_writes_the_same_bytes(tmp_path: Path) -> None:
    """A run directory written by the current code reads back typed, and a run directory that appends
    the records it read (and rewrites its best.json) holds the same bytes."""
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / META_FILE).write_text(json.dumps({"digest": DEMO_DIGEST, "slots": 2}))
    (old / EVALUATIONS_FILE).write_text("".join(x + "\n" for x in LOG_LINES))
    (old / REEVALUATIONS_FILE).write_text(lines.REEVAL + "\n")
    (old / BEST_FILE).write_text(lines.BEST_JSON)
    run = RunDir.read(old)
    assert [(r.round, r.slot) for r in run.records()] == [(-2, 0), (-1, 0), (0, 1)]
    assert run.get(0, slot=1).proposal("d").requested is not None
    again = RunDir(new, DEMO_DIGEST)
    for record in run.records():
        again.append(record)
    for reeval in run.reevaluations():
        again.append_reeval(reeval)
    again.write_best(run.read_best())
    for name in (EVALUATIONS_FILE, REEVALUATIONS_FILE, BEST_FILE):
        assert (new / name).read_text() == (old / name).read_text(), name


def test_to_dict_from_dict_round_trip_of_every_field() -> None:
    record = EvaluationRecord(
        round=3, slot=1, kind="search", seed=7, digest="0123456789abcdef", g_ratios=[0.5, 0.25], d_ratios=[1.0],
        g_channels=[8, 4], d_channels=[16], metrics=Metrics(fd_metric="fid", fid=12.5, l_kde=0.3, rho=0.2, bal=0.1),
        reward=-1.2, reward_terms={"fid": 0.5, "kde": 0.6, "bal": 0.1}, diverged=False,
        times=EvalTimes(prune_s=0.1, finetune_s=2.0, fid_s=0.5, kde_s=0.2, total_s=3.0),
        seed_results=[SeedResult(seed=7, metrics=Metrics(fid=1.0))],
        proposals={"g": ProposalInfo(requested=[0.6, 0.2], actions=[0.1, -0.2], macs_fraction=0.3)},
        round_times=RoundTimes(agents_s=0.5, coordination_s=0.01, evaluation_s=3.1, finished_at=1.7e9),
        reeval=Reeval(seeds=[10_000], rewards=[-1.0], reward=-1.0, search_reward=-1.2, uniform_reward=-1.15,
                      candidates=[ReevalCandidate(round=-1, search_reward=-1.15, reward=-1.15, rewards=[-1.15])]),
        extra={"note": "kept"},
    )
    data = json.loads(json.dumps(record.to_dict()))
    assert EvaluationRecord.from_dict(data) == record
    assert list(data)[:5] == ["round", "slot", "kind", "seed", "digest"] and list(data)[-1] == "note"
    assert pickle.loads(pickle.dumps(record)) == record  # what Ray does between actors
    assert record.metrics.fd == 12.5 and record.ratios("g") == [0.5, 0.25] and record.channels("d") == [16]


def test_an_unstamped_record_writes_no_identity_keys() -> None:
    data = EvaluationRecord(seed=0, metrics=Metrics(rho=1.0)).to_dict()
    assert list(data) == ["seed", "g_ratios", "d_ratios", "g_channels", "d_channels", "metrics", "reward",
                          "reward_terms", "diverged", "times"]


def test_old_line_missing_optional_keys_loads_with_defaults(tmp_path: Path) -> None:
    """An older line: no slot, channels, reward_terms, diverged, times; an unknown key; it loads with
    defaults, the unknown key is kept and written back."""
    line = {"round": 0, "seed": 0, "digest": DEMO_DIGEST, "g_ratios": [0.5], "d_ratios": [0.5],
            "metrics": {"fid": 3.0, "g_macs_fraction": 0.2}, "reward": -1.0, "legacy_note": {"a": 1}}
    record = EvaluationRecord.from_dict(line)
    assert record.slot is None and record.kind is None and record.g_channels == [] and record.reward_terms == {}
    assert record.diverged is False and record.times == EvalTimes() and record.proposals is None
    assert record.round_times is None and record.seed_results is None and record.reeval is None
    assert record.metrics.fd_metric == "fid" and record.metrics.fd == 3.0 and record.metrics.l_kde is None
    assert record.extra == {"legacy_note": {"a": 1}} and record.to_dict()["legacy_note"] == {"a": 1}
    (tmp_path / META_FILE).write_text(json.dumps({"digest": DEMO_DIGEST}))
    (tmp_path / EVALUATIONS_FILE).write_text(json.dumps(line) + "\n")
    logged = RunDir.read(tmp_path).get(0)
    assert logged is not None and logged.slot == 0 and logged.extra == {"legacy_note": {"a": 1}}
    assert ReevalRecord.from_dict({"round": -1, "seed": 5}).slot == 0
    times = EvalTimes.from_dict({"total_s": 1.0, "upload_s": 0.5})
    assert times.total_s == 1.0 and times.prune_s is None and times.to_dict() == {"total_s": 1.0, "upload_s": 0.5}


def test_a_diverged_record_as_the_evaluator_writes_it() -> None:
    """Fine-tuning diverged: no FD or L_kde key, ``rho`` and ``bal`` null, the penalty as reward."""
    line = ('{"seed": 0, "g_ratios": [0.5], "d_ratios": [0.5], "g_channels": [8], "d_channels": [8], "metrics": '
            '{"g_macs": 10, "g_macs_fraction": 0.25, "fd_metric": "fid", "rho": null, "bal": null}, "reward": -10.0, '
            '"reward_terms": {"penalty": -10.0}, "diverged": true, "times": {"prune_s": 0.1, "finetune_s": 0.2, '
            '"fid_s": 0.0, "kde_s": 0.0, "total_s": 0.3}}')
    record = EvaluationRecord.from_dict(json.loads(line))
    assert record.diverged and record.metrics.fd is None and "fid" not in record.metrics and "rho" in record.metrics
    assert record.metrics.number("bal") is None and json.dumps(record.to_dict()) == line


def test_metrics_number_and_copies() -> None:
    m = Metrics(fid=math.nan, l_kde=0.5, fd_metric="fid", flag=True)
    assert m.number("fid") is None and m.number("l_kde") == 0.5 and m.number("flag") is None
    assert m.number("missing") is None and Metrics.from_dict(m) is m and Metrics.from_dict(None) == {}
    record = EvaluationRecord(metrics={"fid": 1.0})  # type: ignore[arg-type]
    assert isinstance(record.metrics, Metrics) and dataclasses.replace(record, seed=1).metrics.fid == 1.0


def test_a_line_that_is_not_a_record_is_a_run_dir_error(tmp_path: Path) -> None:
    from collabprune.errors import RunDirError

    (tmp_path / META_FILE).write_text(json.dumps({"digest": DEMO_DIGEST}))
    (tmp_path / EVALUATIONS_FILE).write_text("[1, 2]\n")
    with pytest.raises(RunDirError, match="not an evaluation record"):
        RunDir.read(tmp_path)
    (tmp_path / EVALUATIONS_FILE).write_text("")
    (tmp_path / REEVALUATIONS_FILE).write_text(json.dumps({"slot": 0, "digest": DEMO_DIGEST}) + "\n")
    with pytest.raises(RunDirError, match="not a re-evaluation of this run"):
        RunDir.read(tmp_path)
