"""Run directory of a search (DESIGN.md §6): evaluation log, best pair, checkpoints, resume.

Layout of ``RUN_DIR``::

    config.yaml               the resolved run config (save_config)
    run.json                  {"digest": run digest, "slots": candidates per round, "evaluators": the pool
                              the run started with, "created": ISO time, "versions": {...}}; slots and
                              evaluators are fixed for the run's life (a resume keeps them)
    evaluations.jsonl         one JSON line per evaluated pair, append-only, fsynced per line
    reevaluations.jsonl       the top-k re-evaluation with fresh seeds (one line per (round, slot, seed))
    best.json                 the best record so far (atomic rewrite); after the search, the
                              re-evaluated winner with its ``reeval`` scores
    checkpoints/<role>/       agent checkpoints: round_000010/ folders + latest.json pointer
    candidates/round_XXXXX/   the fine-tuned weights + specs of the uniform candidate and of the best
                              pair (other rounds' are deleted once logged); what ``export`` ships
    tb/<role>/                TensorBoard logs of each agent
    plots/                    reward / MACs curves (PNG)

Records in ``evaluations.jsonl`` (:class:`~collabprune.records.EvaluationRecord`, one JSON object a
line, the format of :meth:`~collabprune.records.EvaluationRecord.to_dict`) are keyed by (round, slot): round ``-2`` is the teacher pair
(``"kind": "teacher"``), ``-1`` the uniform candidate (``"kind": "uniform"``, its metrics averaged
over ``reward.uniform_seeds`` seeds), ``0 .. search.rounds-1`` the search rounds (``"kind":
"search"``), each with ``slots`` candidates (slot ``0 .. slots-1``; ``slots`` is fixed when the run is
created and recorded in ``run.json``). Every record carries the run digest, its round, slot and
evaluation seed, so an evaluation is identified by (digest, round, slot, seed) and is never repeated:
a resumed run reads the log and answers logged evaluations from it.

This module is core library code: it knows nothing of agents or environments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from collabprune.config import RunConfig, load_config, save_config
from collabprune.errors import RunDirError
from collabprune.io import atomic_write_json, file_sha256
from collabprune.records import EvaluationRecord, ReevalRecord

CONFIG_FILE = "config.yaml"
#: a latency budget's measured latency model (:mod:`collabprune.latency_budget`)
LATENCY_MODEL_FILE = "latency_model.json"
META_FILE = "run.json"
EVALUATIONS_FILE = "evaluations.jsonl"
REEVALUATIONS_FILE = "reevaluations.jsonl"
BEST_FILE = "best.json"
#: a multi-budget search's re-evaluated best per budget (:meth:`RunDir.write_front`)
FRONT_FILE = "front.json"
LATEST_FILE = "latest.json"
CANDIDATES_DIR = "candidates"

TEACHER_ROUND = -2
UNIFORM_ROUND = -1

#: Config fields that change how a run is executed, not what it computes; they are left out of the
#: run digest so a run can be resumed with, e.g., a longer timeout or more evaluators.
OPERATIONAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("search", "num_evaluators"),
    ("search", "round_timeout_s"),
    ("search", "startup_timeout_s"),
    ("search", "evaluator_max_restarts"),
    ("search", "agent_max_restarts"),
)


#: Fields added after run directories existed, at the value that reproduces the older behaviour: left
#: out of the run digest at that value, so an older run directory keeps its digest and still resumes.
LATER_FIELDS_AT_OLD_VALUE: tuple[tuple[str, str, Any], ...] = (
    ("agents", "learn_during_evaluation", False),
    ("agents", "steps_before_proposal", 0),
    ("model", "family", "pix2pix"),
    ("teacher", "lambda_cycle", 10.0),
    ("teacher", "lambda_identity", 0.5),
    ("teacher", "pool_size", 50),
    ("teacher", "d_warmup_steps", 300),
    ("pruning", "latency_model", None),
    ("pruning", "latency_samples", 24),
    ("search", "budgets", None),
    ("reward", "w_l1", 0.0),
    ("finetune", "search_lr", None),
    ("search", "d_action_log2_range", None),
    ("reward", "w_pull", 0.0),
    ("reward", "w_pull_d", 0.0),
    ("reward", "w_team_d", 1.0),
)


def run_digest(cfg: RunConfig) -> str:
    """Digest identifying the experiment of a run (16 hex chars).

    It is :meth:`RunConfig.digest` of the config without the ``output`` section (a run directory
    may be moved), without :data:`OPERATIONAL_FIELDS`, and without :data:`LATER_FIELDS_AT_OLD_VALUE`
    where they hold their old value. A latency budget's measured model counts by its content, not
    its path (the run's own ``latency_model.json`` moves with the run).

    :param cfg: the run config.
    :returns: 16 hexadecimal characters.
    """

    data = cfg.to_dict()
    data.pop("output", None)
    for section, name in OPERATIONAL_FIELDS:
        data.get(section, {}).pop(name, None)
    for section, name, old_value in LATER_FIELDS_AT_OLD_VALUE:
        if data.get(section, {}).get(name) == old_value:
            data[section].pop(name)
    model = cfg.pruning.latency_model
    if model is not None:
        data["pruning"]["latency_model"] = file_sha256(model) if Path(model).is_file() else str(model)
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def round_seed(cfg: RunConfig, round_index: int) -> int:
    """Evaluation seed of a round.

    With ``search.common_seed`` (default) every round uses ``search.seed``: common random numbers, so
    two candidates see the same fine-tuning batches, perturbations and dropout draws and their
    rewards differ by the candidate only. Otherwise ``search.seed * 1_000_003 + round + 2``
    (>= 0 for the teacher), a fresh draw per round.

    :param cfg: the run config.
    :param round_index: ``-2`` (teacher), ``-1`` (uniform) or a search round ``>= 0``.
    """
    if cfg.search.common_seed:
        return cfg.search.seed
    return cfg.search.seed * 1_000_003 + round_index + 2


def round_kind(round_index: int) -> str:
    """``"teacher"``, ``"uniform"`` or ``"search"`` for a round index."""
    if round_index == TEACHER_ROUND:
        return "teacher"
    if round_index == UNIFORM_ROUND:
        return "uniform"
    if round_index < 0:
        raise ValueError(f"round {round_index} is not a valid round (>= -2)")
    return "search"


def resume_config(run_dir: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """The config of an existing run directory (its ``config.yaml``), with ``--set`` overrides.

    Overrides of fields in the run digest make :meth:`RunDir.open` fail later with a
    :class:`RunDirError`; operational fields (:data:`OPERATIONAL_FIELDS`) may be changed.

    :param run_dir: the run directory.
    :param overrides: ``key.sub=value`` strings.
    :raises RunDirError: no run directory or no ``config.yaml`` in it.
    :raises ConfigError: the stored config or an override is invalid.
    """
    path = Path(run_dir)
    if not (path / CONFIG_FILE).is_file():
        raise RunDirError(f"{path}: not a run directory (no {CONFIG_FILE})",
                          hint="give the folder a previous `collabprune search` wrote")
    cfg = load_config(path / CONFIG_FILE, _older_values(path / CONFIG_FILE) + list(overrides or []))
    own = path / LATENCY_MODEL_FILE
    if cfg.pruning.latency_model is not None and own.is_file():  # the run's own model, wherever the run now is
        cfg.pruning.latency_model = own.resolve()
    return cfg


def _older_values(config_file: Path) -> list[str]:
    """Overrides that give a stored config's missing :data:`LATER_FIELDS_AT_OLD_VALUE` their old value.

    A run directory written before a field existed ran with the field's old value; read without it,
    the field would take today's default (``agents.learn_during_evaluation`` became ``auto``).
    An unreadable file gives none (:func:`load_config` reports it).
    """
    try:
        stored = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(stored, dict):
        return []
    return [f"{section}.{name}={json.dumps(old)}" for section, name, old in LATER_FIELDS_AT_OLD_VALUE
            if not isinstance(stored.get(section), dict) or name not in stored[section]]


def _parse(cls: Any, data: Any, where: str, what: str) -> Any:
    """``cls.from_dict(data)`` (an evaluation or re-evaluation record) of one log line.

    :param what: what the line should be, for the message.
    :raises RunDirError: the line is not such a record (not an object, or a required key missing).
    """
    try:
        return cls.from_dict(data)
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        raise RunDirError(f"{where}: not {what} ({err})") from None


def _key(record: EvaluationRecord) -> tuple[int, int]:
    """(round, slot) of a logged record."""
    return int(record.round or 0), int(record.slot or 0)


class RunDir:
    """A search's run directory: the single writer of its evaluation log and ``best.json``.

    Create a new one with :meth:`create` or reopen one to resume with :meth:`open`; both read the
    existing log into memory. Only one process (the Coordinator, or the driver before the agents
    start) appends at a time.

    :param path: the run directory.
    :param digest: the run digest (:func:`run_digest`) every record is stamped with.
    :param load_log: read ``evaluations.jsonl`` now (``False`` for processes that only use paths
        and checkpoints, e.g. the agents).
    :raises RunDirError: the log is corrupt or holds records of another config.
    """

    def __init__(self, path: str | os.PathLike[str], digest: str, load_log: bool = True) -> None:
        self.path = Path(path)
        self.digest = digest
        self.slots, evaluators = _stored_pool(self.path)
        #: evaluations that run at once: the evaluator pool the run started with, at most its slots
        self.evaluations_at_once = min(self.slots, evaluators)
        self._records: dict[tuple[int, int], EvaluationRecord] = {}
        self._reevals: dict[tuple[int, int, int], ReevalRecord] = {}
        # logged evaluations whose candidate folder prune_candidates already removed (a record that
        # left the top k never re-enters it, so it is never looked at again)
        self._pruned: set[tuple[int, int]] = set()
        if load_log:
            self._load()

    # ----------------------------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def evaluations_path(self) -> Path:
        return self.path / EVALUATIONS_FILE

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    @property
    def front_path(self) -> Path:
        return self.path / FRONT_FILE

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def tb_dir(self, role: str) -> Path:
        """TensorBoard folder of one agent (``tb/<role>``)."""
        return self.path / "tb" / role

    def checkpoint_dir(self, role: str) -> Path:
        """Checkpoint folder of one agent (``checkpoints/<role>``)."""
        return self.path / "checkpoints" / role

    @property
    def reevaluations_path(self) -> Path:
        return self.path / REEVALUATIONS_FILE

    def prune_candidates(self, keep_top: int = 0) -> None:
        """Delete the saved weights of logged evaluations that are neither a uniform candidate nor
        among the ``max(1, keep_top)`` best of their budget by search reward (evaluations still
        running are never touched)."""
        root = self.path / CANDIDATES_DIR
        if not root.is_dir():
            return
        keep = {k for k in self._records if k[0] == UNIFORM_ROUND}
        for budget in self.budgets():
            keep |= {_key(r) for r in self.top(max(1, keep_top), budget)}
        for key in self._records.keys() - keep - self._pruned:
            shutil.rmtree(candidate_dir(self.path, *key), ignore_errors=True)
            self._pruned.add(key)

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def create(cls, path: str | os.PathLike[str], cfg: RunConfig, slots: int = 1,
               evaluators: int | None = None) -> "RunDir":
        """Start a new run directory: write ``config.yaml`` and ``run.json``.

        :param path: the folder (created; it may exist if it holds no run yet).
        :param cfg: the resolved run config.
        :param slots: candidates per round (fixed for the run's life: a resume keeps it).
        :param evaluators: the evaluator pool the run starts with (default ``slots``); with the slots it
            fixes :attr:`evaluations_at_once`, which the agents' learning schedule follows
            (``agents.learn_during_evaluation: auto``), so a resume on another pool learns as the run did.
        :raises RunDirError: the folder already holds a run (resume it instead).
        """
        path = Path(path)
        cls.check_free(path)
        path.mkdir(parents=True, exist_ok=True)
        digest = run_digest(cfg)
        save_config(cfg, path / CONFIG_FILE)
        atomic_write_json(path / META_FILE, {"digest": digest, "slots": int(slots),
                                             "evaluators": int(slots if evaluators is None else evaluators),
                                             "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "versions": package_versions()})
        return cls(path, digest)

    @staticmethod
    def check_free(path: str | os.PathLike[str]) -> None:
        """:raises RunDirError: the folder already holds a run (a new run must not start there)."""
        path = Path(path)
        if (path / EVALUATIONS_FILE).exists() or (path / META_FILE).exists():
            raise RunDirError(f"{path}: already holds a run", hint=f"resume it with --resume {path}, "
                              "or choose another --out")

    @classmethod
    def open(cls, path: str | os.PathLike[str], cfg: RunConfig) -> "RunDir":
        """Reopen a run directory to resume it; repair a torn last log line; refresh ``best.json``.

        :param path: the run directory.
        :param cfg: the config the run continues with; its run digest must match the stored one.
        :raises RunDirError: missing folder or ``run.json``, a different config digest, or a corrupt log.
        """
        path = Path(path)
        stored = _stored_digest(path)
        digest = run_digest(cfg)
        if stored != digest:
            raise RunDirError(
                f"{path}: config digest {digest} does not match the run's {stored}",
                hint="resume with the run's own config.yaml (only search.num_evaluators, "
                "search.round_timeout_s and search.evaluator_max_restarts may change)",
            )
        _repair_tail(path / EVALUATIONS_FILE)
        run = cls(path, digest)
        run.refresh_best()
        return run

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "RunDir":
        """Open a run directory read-only (export, inspect), finished or still running.

        The stored digest is used as it is: a run made by another collabprune version, whose config
        now digests differently, can still be read. Nothing is repaired or written.

        :raises RunDirError: missing folder or ``run.json``, or a corrupt log.
        """
        return cls(path, _stored_digest(Path(path)))

    def _load(self) -> None:
        self._records.clear()
        self._pruned.clear()
        for lineno, data in _read_lines(self.evaluations_path):
            record = _parse(EvaluationRecord, data, f"{self.evaluations_path}:{lineno}", "an evaluation record")
            if record.slot is None:
                record.slot = 0  # older lines
            rnd, slot = record.round, record.slot
            if not isinstance(rnd, int) or not isinstance(slot, int):
                raise RunDirError(f"{self.evaluations_path}:{lineno}: record has no integer 'round' and 'slot'")
            if record.digest != self.digest:
                raise RunDirError(f"{self.evaluations_path}:{lineno}: record of another config "
                                  f"(digest {record.digest}, run {self.digest})")
            if (rnd, slot) in self._records:
                raise RunDirError(f"{self.evaluations_path}:{lineno}: round {rnd} slot {slot} logged twice")
            self._records[(rnd, slot)] = record
        self._reevals.clear()
        for lineno, data in _read_lines(self.reevaluations_path):
            where = f"{self.reevaluations_path}:{lineno}"
            reeval = _parse(ReevalRecord, data, where, "a re-evaluation of this run")
            key = (reeval.round, reeval.slot, reeval.seed)
            if reeval.digest != self.digest or not all(isinstance(k, int) for k in key):
                raise RunDirError(f"{where}: not a re-evaluation of this run")
            self._reevals[key] = reeval

    # ------------------------------------------------------------------------------ the log
    def _append_line(self, path: Path, *records: dict[str, Any]) -> None:
        lines = "".join(json.dumps(record, allow_nan=True) + "\n" for record in records)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, record: EvaluationRecord) -> EvaluationRecord:
        """Append one evaluation record, flushed and fsynced before returning.

        The record is stamped with ``digest``, ``kind`` (from its ``round``) and ``slot`` (default 0)
        and must carry ``round`` and ``seed``.

        :param record: the evaluation record (it is not changed; a stamped copy is logged).
        :returns: the stamped record as written.
        :raises ValueError: the (round, slot) is already logged, ``round``/``seed`` are missing, or
            the slot is outside the run's slots.
        """
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[EvaluationRecord]) -> list[EvaluationRecord]:
        """:meth:`append` several records with one write and one fsync (a group commit).

        Every record is checked before anything is written: one bad record writes none.

        :returns: the stamped records as written, in order.
        :raises ValueError: as :meth:`append`, also for a (round, slot) twice in ``records``.
        """
        stamped: list[EvaluationRecord] = []
        for record in records:
            if not isinstance(record.round, int) or isinstance(record.round, bool) or record.seed is None:
                raise ValueError("an evaluation record needs an integer 'round' and a 'seed'")
            rnd, slot = record.round, int(record.slot or 0)
            if not 0 <= slot < (self.slots if rnd != TEACHER_ROUND else 1):
                raise ValueError(f"slot {slot} is outside this run's {self.slots} slot(s) per round")
            if (rnd, slot) in self._records or any(_key(r) == (rnd, slot) for r in stamped):
                raise ValueError(f"round {rnd} slot {slot} is already in {self.evaluations_path}")
            stamped.append(dataclasses.replace(record, slot=slot, kind=round_kind(rnd), digest=self.digest))
        self._append_line(self.evaluations_path, *(r.to_dict() for r in stamped))
        for r in stamped:
            self._records[_key(r)] = r
        return stamped

    def get(self, round_index: int, seed: int | None = None, slot: int = 0) -> EvaluationRecord | None:
        """The logged record of (round, slot), or ``None``.

        :param round_index: the round.
        :param seed: when given, a logged record with another seed raises.
        :param slot: the candidate's slot in its round.
        :raises RunDirError: the logged record has a different seed.
        """
        record = self._records.get((round_index, slot))
        if record is not None and seed is not None and record.seed != seed:
            raise RunDirError(f"{self.evaluations_path}: round {round_index} slot {slot} was evaluated with seed "
                              f"{record.seed}, not {seed}")
        return record

    def round_records(self, round_index: int) -> list[EvaluationRecord | None]:
        """The records of every slot of a search round (``None`` where a slot is not logged yet)."""
        return [self._records.get((round_index, s)) for s in range(self.slots)]

    def records(self) -> list[EvaluationRecord]:
        """All records, teacher and uniform first, then search rounds in (round, slot) order."""
        return [self._records[k] for k in sorted(self._records)]

    def search_records(self) -> list[EvaluationRecord]:
        """Search records (round >= 0) in (round, slot) order."""
        return [self._records[k] for k in sorted(self._records) if k[0] >= 0]

    def completed_rounds(self) -> int:
        """Number of search rounds done: the gap-free prefix 0, 1, ... of rounds with every slot logged.

        :raises RunDirError: the log has a gap (an evaluation logged after an incomplete round).
        """
        done = 0
        while all((done, s) in self._records for s in range(self.slots)):
            done += 1
        later = [k for k in self._records if k[0] > done]
        if later:
            raise RunDirError(f"{self.evaluations_path}: round {done} is incomplete but round {min(later)[0]} is logged")
        return done

    # ----------------------------------------------------------------------------- best pair
    def budgets(self) -> list[float | None]:
        """The generator budgets of the run: one per logged uniform candidate, in slot order, primary
        first (``[None]`` for a single-budget run, whose records carry none)."""
        uniform = [self._records[k] for k in sorted(self._records) if k[0] == UNIFORM_ROUND]
        return [u.budget for u in uniform] or [None]

    @property
    def primary_budget(self) -> float | None:
        """The run's primary generator budget: the one of the uniform candidate in slot 0 (``None``
        for a single-budget run)."""
        uniform = self._records.get((UNIFORM_ROUND, 0))
        return uniform.budget if uniform is not None else None

    def top(self, k: int, budget: float | None = None) -> list[EvaluationRecord]:
        """The ``k`` best search records of a generator budget by search reward (finite rewards
        only), best first.

        :param budget: a multi-budget search's budget (records carry it); ``None`` for the primary
            budget (every record of a single-budget run).
        """
        budget = self.primary_budget if budget is None else budget
        scored = [r for r in self.search_records()
                  if r.finite_reward is not None and not r.diverged and r.budget == budget]
        return sorted(scored, key=lambda r: (-r.reward, r.round, r.slot))[:k]  # type: ignore[operator]

    def best(self, budget: float | None = None) -> EvaluationRecord | None:
        """The best record so far among the uniform candidate and the search rounds of a generator
        budget (default the primary one), by search reward."""
        best: EvaluationRecord | None = None
        primary = self.primary_budget if budget is None else budget
        for record in self.records():
            if record.round == TEACHER_ROUND or record.finite_reward is None or record.budget != primary:
                continue
            if best is None or record.reward > best.reward:  # type: ignore[operator]
                best = record
        return best

    def update_best(self, record: EvaluationRecord) -> bool:
        """Rewrite ``best.json`` (atomically) when ``record``, of the primary budget, beats it by
        search reward.

        :param record: a logged record.
        :returns: whether ``best.json`` changed.
        """
        current = self.read_best()
        reward = record.finite_reward
        if reward is None or record.budget != self.primary_budget:
            return False
        if current is not None and current.finite_reward is not None and current.finite_reward >= reward:
            return False
        atomic_write_json(self.best_path, record.to_dict())
        return True

    def refresh_best(self) -> None:
        """Make ``best.json`` agree with the log (after a kill between a log append and its update).

        A re-evaluated ``best.json`` (it has ``reeval``) is left as it is when the log is complete.
        """
        current = self.read_best()
        if current is not None and current.reeval is not None:
            return
        best = self.best()
        if best is not None and current != best:
            atomic_write_json(self.best_path, best.to_dict())

    def write_best(self, record: EvaluationRecord) -> None:
        """Replace ``best.json`` (atomically) with ``record`` (the re-evaluated winner)."""
        atomic_write_json(self.best_path, record.to_dict())

    def read_best(self) -> EvaluationRecord | None:
        """The content of ``best.json``, or ``None`` when there is none yet."""
        if not self.best_path.is_file():
            return None
        return EvaluationRecord.from_dict(json.loads(self.best_path.read_text()))

    def write_front(self, records: Sequence[EvaluationRecord]) -> None:
        """Write ``front.json`` (atomically): a multi-budget search's re-evaluated best per budget
        (:func:`collabprune.selection.reevaluate_top`), primary budget first."""
        atomic_write_json(self.front_path, {"best": [r.to_dict() for r in records]})

    def front_entry(self, budget: float) -> EvaluationRecord | None:
        """The ``front.json`` record of a generator budget (matched to 1e-9), or ``None``."""
        for record in self.read_front():
            if record.budget is not None and math.isclose(record.budget, budget, rel_tol=1e-9, abs_tol=1e-12):
                return record
        return None

    def read_front(self) -> list[EvaluationRecord]:
        """The records of ``front.json`` (``[]`` when there is none: a single-budget run, or before
        the search's re-evaluation)."""
        if not self.front_path.is_file():
            return []
        return [EvaluationRecord.from_dict(r) for r in json.loads(self.front_path.read_text())["best"]]

    # ------------------------------------------------------------------------ re-evaluations
    def get_reeval(self, round_index: int, slot: int, seed: int) -> ReevalRecord | None:
        """The logged re-evaluation of (round, slot) under ``seed``, or ``None``."""
        return self._reevals.get((round_index, slot, seed))

    def append_reeval(self, record: ReevalRecord) -> ReevalRecord:
        """Append one re-evaluation (``round``, ``slot``, ``seed`` required), fsynced.

        :returns: the record as written (stamped with the run digest).
        :raises ValueError: missing keys or already logged.
        """
        key = (record.round, record.slot, record.seed)
        if not all(isinstance(k, int) for k in key):
            raise ValueError("a re-evaluation needs integer 'round', 'slot' and 'seed'")
        if key in self._reevals:
            raise ValueError(f"re-evaluation {key} is already in {self.reevaluations_path}")
        stamped = dataclasses.replace(record, digest=self.digest)
        self._append_line(self.reevaluations_path, stamped.to_dict())
        self._reevals[key] = stamped
        return stamped

    def reevaluations(self) -> list[ReevalRecord]:
        """Every logged re-evaluation, in (round, slot, seed) order."""
        return [self._reevals[k] for k in sorted(self._reevals)]

    # --------------------------------------------------------------------------- checkpoints
    def latest_checkpoint(self, role: str) -> tuple[int, Path] | None:
        """The newest committed checkpoint of an agent.

        :param role: ``"generator"`` or ``"discriminator"``.
        :returns: (rounds done when it was taken, its folder), or ``None``.
        """
        pointer = self.checkpoint_dir(role) / LATEST_FILE
        if not pointer.is_file():
            return None
        info = json.loads(pointer.read_text())
        folder = self.checkpoint_dir(role) / info["folder"]
        if info.get("digest") != self.digest or not folder.is_dir():
            raise RunDirError(f"{pointer}: points to a missing or foreign checkpoint {folder}")
        return int(info["rounds_done"]), folder

    def commit_checkpoint(self, role: str, rounds_done: int, write: Callable[[Path], None], keep: int = 2) -> Path:
        """Write an agent checkpoint atomically.

        ``write(folder)`` fills a temporary folder; it is renamed to ``round_<rounds_done>``, then
        ``latest.json`` is switched to it (atomic), then all but the ``keep`` newest checkpoint
        folders are removed. A kill at any point leaves ``latest.json`` on a complete checkpoint.

        :param role: the agent's role.
        :param rounds_done: search rounds completed by the state being saved.
        :param write: callable that writes the checkpoint files into the folder it is given.
        :param keep: checkpoint folders kept (>= 1).
        :returns: the committed folder.
        """
        root = self.checkpoint_dir(role)
        root.mkdir(parents=True, exist_ok=True)
        name = f"round_{rounds_done:06d}"
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_json(root / LATEST_FILE, {"folder": name, "rounds_done": rounds_done, "digest": self.digest})
        older = sorted(p for p in root.iterdir() if p.is_dir() and p.name != name)
        for old in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def candidate_dir(run_dir: str | os.PathLike[str], round_index: int, slot: int = 0) -> Path:
    """Folder of an evaluation's saved candidate weights: ``candidates/round_00007_s0`` for a search
    round's slot, ``candidates/uniform`` for the uniform candidate (``uniform_s1``, ... for the uniform
    candidates of a multi-budget search's other budgets)."""
    if round_index == UNIFORM_ROUND and slot:  # a multi-budget search's other budgets
        name = f"uniform_s{slot}"
    else:
        name = round_kind(round_index) if round_index < 0 else f"round_{round_index:05d}_s{slot}"
    return Path(run_dir) / CANDIDATES_DIR / name


def package_versions() -> dict[str, str]:
    """Versions of the main libraries (for provenance)."""
    import importlib.metadata as md

    out: dict[str, str] = {}
    for dist in ("collabprune", "torch", "stable-baselines3", "gymnasium", "ray"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _stored_digest(path: Path) -> str:
    """The run digest recorded in ``run.json``.

    :raises RunDirError: no or unreadable ``run.json``.
    """
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise RunDirError(f"{path}: not a run directory (no {META_FILE})",
                          hint="give the folder a previous `collabprune search` wrote")
    try:
        return str(json.loads(meta_path.read_text())["digest"])
    except (ValueError, KeyError) as err:
        raise RunDirError(f"{meta_path}: unreadable ({err})") from None


def _stored_pool(path: Path) -> tuple[int, int]:
    """(slots, evaluators) recorded in ``run.json``, read once: candidates per round (1 when absent: a
    new folder or an older run) and the evaluator pool the run started with (the slots when absent)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}

    def count(key: str, default: int) -> int:
        try:
            return max(1, int(meta.get(key, default)))
        except (ValueError, TypeError, AttributeError):
            return default

    slots = count("slots", 1)
    return slots, count("evaluators", slots)


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every complete line of a JSONL file; a torn last line is skipped.

    :raises RunDirError: a complete line is not valid JSON.
    """
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty or a torn write
    for i, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except ValueError:
            raise RunDirError(f"{path}:{i}: not valid JSON") from None


def _repair_tail(path: Path) -> None:
    """Truncate a torn last line (no trailing newline) left by a kill during an append."""
    if not path.is_file():
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)
        fh.flush()
        os.fsync(fh.fileno())
