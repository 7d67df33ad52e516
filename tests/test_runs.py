"""Run directory: append-only log, best.json, checkpoints, resume bookkeeping, digest checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from collabprune.config import RunConfig
from collabprune.errors import RunDirError
from collabprune.records import EvaluationRecord, Metrics, Reeval, ReevalRecord
from collabprune.runs import (
    EVALUATIONS_FILE,
    OPERATIONAL_FIELDS,
    TEACHER_ROUND,
    UNIFORM_ROUND,
    RunDir,
    candidate_dir,
    resume_config,
    round_kind,
    round_seed,
    run_digest,
)


def cfg(**search: object) -> RunConfig:
    return RunConfig.model_validate({"search": {"rounds": 5, **search}})


def rec(c: RunConfig, rnd: int, reward: float | None, slot: int | None = None) -> EvaluationRecord:
    return EvaluationRecord(round=rnd, slot=slot, seed=round_seed(c, rnd), reward=reward, g_ratios=[0.5],
                            d_ratios=[0.5], metrics=Metrics(g_macs_fraction=0.2))


def test_append_is_on_disk_before_returning(tmp_path: Path) -> None:
    c = cfg()
    run = RunDir.create(tmp_path / "run", c)
    out = run.append(rec(c, TEACHER_ROUND, None))
    assert out.kind == "teacher" and out.digest == run_digest(c)
    lines = (tmp_path / "run" / EVALUATIONS_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["round"] == TEACHER_ROUND
    with pytest.raises(ValueError, match="already"):
        run.append(rec(c, TEACHER_ROUND, None))
    with pytest.raises(ValueError):
        run.append(EvaluationRecord(reward=1.0))
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "run.json").is_file()


def test_best_json_follows_the_best_reward(tmp_path: Path) -> None:
    c = cfg()
    run = RunDir.create(tmp_path, c)
    run.append(rec(c, TEACHER_ROUND, None))
    for rnd, reward in [(UNIFORM_ROUND, -2.5), (0, -3.0), (1, -2.0), (2, float("nan")), (3, -2.2)]:
        r = run.append(rec(c, rnd, reward))
        run.update_best(r)
    assert run.read_best().round == 1
    assert run.best().round == 1
    # a kill between append and update_best: reopening repairs best.json
    r = run.append(rec(c, 4, -1.0))
    reopened = RunDir.open(tmp_path, c)
    assert reopened.read_best().round == 4 and r.round == 4


def test_resume_bookkeeping_and_torn_tail(tmp_path: Path) -> None:
    c = cfg()
    run = RunDir.create(tmp_path, c)
    for rnd in (TEACHER_ROUND, UNIFORM_ROUND, 0, 1, 2):
        run.append(rec(c, rnd, -1.0))
    assert run.completed_rounds() == 3
    # SIGKILL in the middle of an append leaves a line without its newline
    with open(tmp_path / EVALUATIONS_FILE, "a") as fh:
        fh.write('{"round": 3, "seed": 5, "dig')
    reopened = RunDir.open(tmp_path, c)
    assert reopened.completed_rounds() == 3
    assert [r.round for r in reopened.records()] == [-2, -1, 0, 1, 2]
    reopened.append(rec(c, 3, -0.5))
    again = RunDir.open(tmp_path, c)
    assert again.completed_rounds() == 4 and again.get(3, round_seed(c, 3)).reward == -0.5
    with pytest.raises(RunDirError, match="seed"):
        again.get(3, seed=12345)


def test_gap_in_the_log_is_an_error(tmp_path: Path) -> None:
    c = cfg()
    run = RunDir.create(tmp_path, c)
    run.append(rec(c, 0, -1.0))
    run.append(rec(c, 2, -1.0))
    with pytest.raises(RunDirError, match="round 1 is incomplete"):
        run.completed_rounds()


def test_slots_of_a_round(tmp_path: Path) -> None:
    """N candidates per round: a round is complete when every slot is logged; the slot count is the
    run's, kept across a resume; (round, slot) is logged once."""
    c = cfg()
    run = RunDir.create(tmp_path, c, slots=3)
    for slot, reward in ((0, -1.0), (2, -0.5)):
        run.append(rec(c, 0, reward, slot))
    assert run.completed_rounds() == 0 and [r is not None for r in run.round_records(0)] == [True, False, True]
    run.append(rec(c, 0, -2.0, 1))
    assert run.completed_rounds() == 1
    with pytest.raises(ValueError, match="already"):
        run.append(rec(c, 0, -2.0, 1))
    with pytest.raises(ValueError, match="outside"):
        run.append(rec(c, 1, -2.0, 3))
    reopened = RunDir.open(tmp_path, c)
    assert reopened.slots == 3 and reopened.get(0, slot=2).reward == -0.5
    assert [(r.round, r.slot) for r in reopened.top(2)] == [(0, 2), (0, 0)]


def test_group_commit_writes_all_or_nothing(tmp_path: Path) -> None:
    """append_many: one write for several slots; a bad record (logged already, twice in the batch,
    outside the slots) writes none of the batch."""
    c = cfg()
    run = RunDir.create(tmp_path, c, slots=3)
    logged = run.append_many([rec(c, 0, -1.0, 2), rec(c, 0, -0.5, 0)])
    assert [(r.round, r.slot, r.kind) for r in logged] == [(0, 2, "search"), (0, 0, "search")]
    log = tmp_path / EVALUATIONS_FILE
    before = log.read_text()
    for bad in ([rec(c, 0, -2.0, 1), rec(c, 0, -2.0, 0)], [rec(c, 0, -2.0, 1), rec(c, 0, -3.0, 1)],
                [rec(c, 0, -2.0, 1), rec(c, 1, -2.0, 3)]):
        with pytest.raises(ValueError):
            run.append_many(bad)
        assert log.read_text() == before and run.get(0, slot=1) is None
    run.append_many([rec(c, 0, -2.0, 1)])
    assert RunDir.open(tmp_path, c).completed_rounds() == 1


def test_pruned_candidates_are_the_ones_outside_the_top_k(tmp_path: Path) -> None:
    """Candidate weights are kept for the uniform candidate and the top k; the others are removed,
    also those that left the top k since the previous prune."""
    c = cfg()
    run = RunDir.create(tmp_path, c)
    run.append(rec(c, UNIFORM_ROUND, -1.0))
    candidate_dir(tmp_path, UNIFORM_ROUND).mkdir(parents=True)
    for rnd, reward in enumerate([-3.0, -2.0, -4.0, -1.0, -0.5]):
        candidate_dir(tmp_path, rnd).mkdir(parents=True)
        run.append(rec(c, rnd, reward))
        run.prune_candidates(keep_top=2)
        assert {p.name for p in (tmp_path / "candidates").iterdir()} == {
            candidate_dir(tmp_path, r.round).name for r in run.top(2)} | {"uniform"}


def test_reevaluations_are_logged_once_and_survive_a_reopen(tmp_path: Path) -> None:
    c = cfg()
    run = RunDir.create(tmp_path, c)
    run.append_reeval(ReevalRecord(round=0, slot=0, seed=10_000, metrics=Metrics(fid=1.0)))
    with pytest.raises(ValueError, match="already"):
        run.append_reeval(ReevalRecord(round=0, slot=0, seed=10_000))
    again = RunDir.open(tmp_path, c)
    assert again.get_reeval(0, 0, 10_000).metrics == {"fid": 1.0} and again.get_reeval(0, 0, 1) is None
    # a re-evaluated best.json is not replaced by the search-reward best on reopen
    again.append(rec(c, UNIFORM_ROUND, -2.5))
    again.write_best(dataclasses.replace(rec(c, UNIFORM_ROUND, -2.5), reeval=Reeval(reward=-2.5)))
    assert RunDir.open(tmp_path, c).read_best().reeval is not None


def test_config_digest_mismatch_is_a_run_dir_error(tmp_path: Path) -> None:
    c = cfg()
    RunDir.create(tmp_path, c).append(rec(c, TEACHER_ROUND, None))
    with pytest.raises(RunDirError, match="digest"):
        RunDir.open(tmp_path, cfg(rounds=6))
    # reading (export, inspect) needs no matching config: it uses the stored digest
    assert RunDir.read(tmp_path).get(TEACHER_ROUND).digest == run_digest(c)
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.read(tmp_path / "nothing")
    # operational fields and the output folder are not part of the experiment
    moved = cfg(round_timeout_s=10.0, num_evaluators=3)
    moved.output.run_dir = Path("/elsewhere")
    assert RunDir.open(tmp_path, moved).completed_rounds() == 0
    assert resume_config(tmp_path).search.rounds == 5
    assert resume_config(tmp_path, ["search.round_timeout_s=7"]).search.round_timeout_s == 7


def test_a_field_added_later_keeps_the_digest_of_older_run_directories(tmp_path: Path) -> None:
    """Fields added later (agents.learn_during_evaluation, model.family, the CycleGAN teacher fields) did
    not exist when older run directories were made: at their old values they are not part of the
    digest, so they still resume; switched on, each is an experiment of its own."""
    import hashlib

    from collabprune.runs import LATER_FIELDS_AT_OLD_VALUE

    assert {("agents", "learn_during_evaluation"), ("model", "family"), ("teacher", "d_warmup_steps"),
            ("pruning", "latency_model"), ("pruning", "latency_samples")} <= {
        (s, n) for s, n, _ in LATER_FIELDS_AT_OLD_VALUE}
    c = cfg()
    c.agents.learn_during_evaluation = False  # its old value (the default is auto now)
    c = RunConfig.model_validate({**c.to_dict(), "reward": {**c.reward.model_dump(), "w_team_d": 1.0,
                                                              "w_pull_d": 0.0}})  # the team reward, as before
    older = c.to_dict()
    older.pop("output")
    for section, name, _ in LATER_FIELDS_AT_OLD_VALUE:  # what the older code hashed
        older[section].pop(name)
    for section, name in OPERATIONAL_FIELDS:
        older[section].pop(name)
    assert run_digest(c) == hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()[:16]
    RunDir.create(tmp_path, c).append(rec(c, TEACHER_ROUND, None))
    overlap = cfg()
    overlap.agents.learn_during_evaluation = True
    with pytest.raises(RunDirError, match="digest"):
        RunDir.open(tmp_path, overlap)


def test_an_older_config_file_resumes_with_the_old_values_of_later_fields(tmp_path: Path) -> None:
    """A run directory whose config.yaml predates the later fields (none of them written) resumes as it
    ran: each at its old value (learning sequential, not today's auto), under the digest it was made
    with; an override still wins."""
    import yaml

    from collabprune.runs import CONFIG_FILE, LATER_FIELDS_AT_OLD_VALUE

    data = cfg().to_dict()
    for section, name, old in LATER_FIELDS_AT_OLD_VALUE:
        data[section][name] = old
    c = RunConfig.model_validate(data)
    RunDir.create(tmp_path, c)
    stored = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    for section, name, _ in LATER_FIELDS_AT_OLD_VALUE:
        stored[section].pop(name)
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(stored))
    assert RunConfig.model_validate(stored).agents.learn_during_evaluation == "auto"
    back = resume_config(tmp_path)
    assert back.agents.learn_during_evaluation is False
    assert RunDir.open(tmp_path, back).digest == run_digest(c)
    assert resume_config(tmp_path, ["agents.learn_during_evaluation=true"]).agents.learn_during_evaluation is True


def test_the_evaluator_pool_a_run_started_with_is_kept(tmp_path: Path) -> None:
    """run.json records the slots and the evaluator pool of a new run; reopened under another
    search.num_evaluators the run keeps both, so its agents learn on the schedule it started with
    (RunDir.evaluations_at_once: the slots, at most the pool)."""
    c = cfg(num_evaluators=4)
    run = RunDir.create(tmp_path / "a", c, slots=4, evaluators=4)
    assert json.loads((run.path / "run.json").read_text())["evaluators"] == 4
    assert RunDir.open(tmp_path / "a", cfg(num_evaluators=1)).evaluations_at_once == 4
    assert RunDir.create(tmp_path / "b", c, slots=4, evaluators=1).evaluations_at_once == 1
    assert RunDir.create(tmp_path / "c", c, slots=2, evaluators=8).evaluations_at_once == 2
    assert RunDir.create(tmp_path / "d", c, slots=3).evaluations_at_once == 3


def test_new_run_in_a_used_folder_and_missing_run(tmp_path: Path) -> None:
    c = cfg()
    RunDir.create(tmp_path / "a", c)
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir.create(tmp_path / "a", c)
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.open(tmp_path / "b", c)
    with pytest.raises(RunDirError, match="not a run directory"):
        resume_config(tmp_path / "b")


def test_foreign_records_are_rejected(tmp_path: Path) -> None:
    c = cfg()
    RunDir.create(tmp_path, c)
    line = json.dumps({"round": 0, "seed": 2, "digest": "0000000000000000"})
    (tmp_path / EVALUATIONS_FILE).write_text(line + "\n")
    with pytest.raises(RunDirError, match="another config"):
        RunDir.open(tmp_path, c)


def test_checkpoints_are_committed_atomically(tmp_path: Path) -> None:
    c = cfg()
    run = RunDir.create(tmp_path, c)
    assert run.latest_checkpoint("generator") is None
    for done in (2, 4, 6):
        run.commit_checkpoint("generator", done, lambda d, n=done: (d / "model.txt").write_text(str(n)))
    done, folder = run.latest_checkpoint("generator")
    assert done == 6 and (folder / "model.txt").read_text() == "6"
    kept = sorted(p.name for p in run.checkpoint_dir("generator").iterdir() if p.is_dir())
    assert kept == ["round_000004", "round_000006"]

    def crash(d: Path) -> None:
        (d / "model.txt").write_text("partial")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        run.commit_checkpoint("generator", 8, crash)
    assert run.latest_checkpoint("generator")[0] == 6  # still the last complete checkpoint
    assert not [p for p in run.checkpoint_dir("generator").iterdir() if p.name.endswith(".tmp")]


def test_round_kinds_and_seeds() -> None:
    c = cfg(seed=3)
    assert [round_kind(r) for r in (-2, -1, 0, 7)] == ["teacher", "uniform", "search", "search"]
    assert {round_seed(c, r) for r in range(-2, 10)} == {3}  # common random numbers (default)
    fresh = cfg(seed=3, common_seed=False)
    assert len({round_seed(fresh, r) for r in range(-2, 10)}) == 12
    assert min(round_seed(cfg(common_seed=False), r) for r in (-2, -1, 0)) == 0
    with pytest.raises(ValueError):
        round_kind(-3)
