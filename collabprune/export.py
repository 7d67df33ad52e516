"""Export of a run's best sub-network pair (DESIGN.md §6).

``OUT/subnet.json`` holds, per network, the :class:`~collabprune.models.spec.SubnetSpec`, the
channels kept per group, MACs in both conventions, params and the MACs fraction of the teacher;
plus every metric and the reward of the best pair, the teacher checkpoints' SHA-256, the package
versions, the measured CPU latency of teacher and pruned G (and, for a latency budget, the target,
the predicted and the measured latency on the budget's backend: ``latency.budget``), and a schema version.
``OUT/generator.pt`` / ``OUT/discriminator.pt`` are the fine-tuned state dicts: after the held-out
summary (:func:`collabprune.summary.summarise_run`) the best pair's final fine-tuning
(``finetune.final_steps``, first final seed, ``RUN_DIR/final``) with its held-out metrics, else the
weights the search scored; :func:`collabprune.models.load_subnet` rebuilds them in plain PyTorch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from collabprune.config import RunConfig
from collabprune.errors import RunDirError
from collabprune.io import atomic_path, atomic_write_json, file_sha256
from collabprune.latency_budget import export_latency
from collabprune.metrics.latency import measure_latency
from collabprune.metrics.macs import macs, macs_published, params
from collabprune.models import build_discriminator, load_candidate
from collabprune.models.subnet import NETWORK_FILES, SPEC_FILES, SUBNET_FILE, load_subnet
from collabprune.models.spec import SubnetSpec
from collabprune.records import EvaluationRecord
from collabprune.runs import RunDir, candidate_dir, package_versions, resume_config
from collabprune.teacher_checkpoints import D_FILE, WARMUP_DIR, load_teacher_generator, teacher_files

EXPORT_SCHEMA_VERSION = 2


def _network_entry(spec: SubnetSpec, net: torch.nn.Module, shape: tuple[int, ...], teacher_macs: int) -> dict[str, Any]:
    physical = macs(net, shape)
    return {
        "spec": spec.to_dict(),
        "channels": spec.kept,
        "input_shape": list(shape),
        "macs": physical,
        "macs_published": macs_published(net, shape),
        "params": params(net),
        "macs_fraction": physical / teacher_macs,
    }


def best_for_budget(run: RunDir, budget: float | None) -> EvaluationRecord:
    """The pair a run calls best at a generator budget.

    :param run: the run directory.
    :param budget: a fraction of the teacher's G MACs: one of a multi-budget search's
        ``search.budgets`` (its ``front.json`` entry); ``None`` for the primary budget (``best.json``).
    :raises RunDirError: no best pair yet, or none at that budget.
    """
    if budget is None:
        best = run.read_best()
        if best is None:
            raise RunDirError(f"{run.path}: no best pair yet (no search round has finished)")
        return best
    record = run.front_entry(budget)
    if record is not None:
        return record
    have = ", ".join(f"{r.budget:g}" for r in run.read_front() if r.budget is not None)
    raise RunDirError(f"{run.path}: no best pair at --budget {budget:g}; " + (
        f"this run's budgets: {have}" if have else "not a finished multi-budget search (search.budgets): "
        "export without --budget"))


def export_best(run_dir: str | Path, out: str | Path, onnx: bool = False, int8: bool = False,
                calibration_images: int = 64, budget: float | None = None) -> dict[str, Any]:
    """Export the best pair of ``run_dir`` to ``out``.

    :param run_dir: a run directory with a ``best.json`` and the best round's saved candidate.
    :param out: export folder (created; existing export files are replaced atomically).
    :param onnx: also write ``generator.onnx`` (needs the ``onnx`` extra).
    :param int8: also write ``generator.int8.onnx`` (implies ``onnx``) and record its held-out metrics
        and latency beside the fp32 student's (:func:`collabprune.quantize.export_int8`).
    :param calibration_images: training images the int8 activation ranges are calibrated on.
    :param budget: a multi-budget search's generator budget to export the best pair of
        (:func:`best_for_budget`); default the primary budget's ``best.json``.
    :returns: the content of ``subnet.json``.
    :raises RunDirError: no best pair yet (at ``budget``), or its saved weights are missing.
    :raises OnnxExportError: the ONNX export or the quantization fails, or the ``onnx`` extra is missing.
    """
    run_dir, out = Path(run_dir), Path(out)
    cfg = resume_config(run_dir)
    run = RunDir.read(run_dir)
    best = best_for_budget(run, budget)
    from collabprune.summary import FINAL_DIR, HELDOUT_DIR

    files = [*NETWORK_FILES.values(), *SPEC_FILES.values()]
    final, summary_path = run_dir / FINAL_DIR, run_dir / HELDOUT_DIR / "summary.json"
    heldout = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if heldout is not None and (heldout.get("best_round"), heldout.get("best_slot", 0)) != (best.round, best.slot or 0):
        heldout = None  # a summary of an earlier best
    if heldout is not None and all((final / f).is_file() for f in files):
        folder, weights = final, f"final fine-tuning ({cfg.finetune.final_steps} steps, seed {cfg.finetune.seed})"
    else:
        folder, weights = candidate_dir(run_dir, int(best.round or 0), best.slot or 0), \
            f"search fine-tuning ({cfg.finetune.steps} steps)"
    if not all((folder / f).is_file() for f in files):
        raise RunDirError(f"{folder}: the weights of the best pair (round {best.round}) are missing")
    info = _describe(cfg, folder, best, run_dir)
    info["weights"] = weights
    if heldout is not None:
        info["heldout"] = {k: heldout[k] for k in ("teacher", "uniform", "best", "verdict")}
    out.mkdir(parents=True, exist_ok=True)
    for weights in NETWORK_FILES.values():
        with atomic_path(out / weights) as tmp:
            shutil.copyfile(folder / weights, tmp)
    atomic_write_json(out / SUBNET_FILE, info)
    if onnx or int8:
        from collabprune.onnx_export import export_onnx

        info["onnx"] = export_onnx(out, cfg)
        atomic_write_json(out / SUBNET_FILE, info)
    if int8:
        from collabprune.quantize import export_int8

        info["int8"] = export_int8(out, cfg, run_dir, calibration_images).to_dict()
        atomic_write_json(out / SUBNET_FILE, info)
    return info


def _describe(cfg: RunConfig, folder: Path, best: EvaluationRecord, run_dir: Path) -> dict[str, Any]:
    """The ``subnet.json`` content for the candidate saved in ``folder`` of ``run_dir``."""
    specs = {role: SubnetSpec.from_json((folder / spec).read_text()) for role, spec in SPEC_FILES.items()}
    teacher_g = load_teacher_generator(cfg, inplace=False)
    teacher_d = build_discriminator(cfg, inplace=False)  # costs only: the unpruned D's shape
    from collabprune.pruning.roles import roles

    shapes = {r.name: r.input_shape for r in roles(cfg)}
    nets = dict(zip(NETWORK_FILES, load_candidate(folder)))
    ckpt = cfg.teacher.checkpoint_dir
    files = teacher_files(cfg)
    d_file = files.d if files.d is not None else run_dir / WARMUP_DIR / D_FILE  # warmed up in the run
    teacher_lat = measure_latency(teacher_g, shapes["generator"], "cpu")
    student_lat = measure_latency(nets["generator"], shapes["generator"], "cpu")
    latency: dict[str, Any] = {"cpu": {"teacher_g_ms": 1e3 * teacher_lat["median_s"],
                                       "pruned_g_ms": 1e3 * student_lat["median_s"]}}
    budget = export_latency(cfg, teacher_g, nets["generator"], specs["generator"].kept)
    if budget is not None:
        latency["budget"] = budget
    if torch.cuda.is_available():
        t = measure_latency(teacher_g, shapes["generator"], "cuda")
        s = measure_latency(nets["generator"], shapes["generator"], "cuda")
        latency["cuda"] = {"teacher_g_ms": 1e3 * t["median_s"], "pruned_g_ms": 1e3 * s["median_s"],
                           "device": torch.cuda.get_device_name()}
    return {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "round": best.round,
        "slot": best.slot or 0,
        "kind": best.kind,
        "reward": best.reward,
        "budget": best.budget,
        "reeval": None if best.reeval is None else best.reeval.to_dict(),
        "reward_terms": dict(best.reward_terms),
        "metrics": best.metrics.to_dict(),
        "generator": _network_entry(specs["generator"], nets["generator"], shapes["generator"],
                                    macs(teacher_g, shapes["generator"])),
        "discriminator": _network_entry(specs["discriminator"], nets["discriminator"], shapes["discriminator"],
                                        macs(teacher_d, shapes["discriminator"])),
        "latency": latency,
        "teacher": {"checkpoint_dir": str(ckpt), "generator_file": files.g.name,
                    "generator_sha256": file_sha256(files.g),
                    "discriminator_file": str(d_file), "discriminator_warmed_up": files.d is None,
                    "discriminator_sha256": file_sha256(d_file) if d_file.is_file() else None},
        "config": cfg.to_dict(),
        "versions": package_versions(),
    }


__all__ = ["EXPORT_SCHEMA_VERSION", "best_for_budget", "export_best", "load_subnet"]
