"""Latency budgets of a run: measure the generator's latency model once, report it at export.

``pruning.budget.generator: {latency_ms: 4.0, batch: 1, backend: torch-cpu}`` budgets the generator
by latency on a named backend. Before a new search starts, :func:`ensure_latency_model` times
``pruning.latency_samples`` sub-networks of the teacher G on that backend, on the machine that
starts the search, fits :class:`~collabprune.pruning.latency_model.LatencyModel` and keeps it in
``RUN_DIR/latency_model.json`` (with the machine's description); the run's config points at it
(``pruning.latency_model``), so every process of the search (agents' envs, coordinator,
evaluators) projects proposals with the same model, and a resume reuses it. At export,
:func:`export_latency` measures the exported G on the same backend next to the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from collabprune.backends import backend_latency_s
from collabprune.config import LatencyBudget, RunConfig
from collabprune.errors import ConfigError
from collabprune.pruning.costs import group_macs_table
from collabprune.pruning.groups import discover_groups
from collabprune.pruning.latency_model import LatencyModel, fit_latency_model, load_latency_model
from collabprune.pruning.roles import Role
from collabprune.pruning.space import ChannelSpace
from collabprune.runs import LATENCY_MODEL_FILE


def latency_budget(cfg: RunConfig) -> LatencyBudget | None:
    """The generator's latency budget, or None for a MACs budget."""
    g = cfg.pruning.budget.generator
    return g if isinstance(g, LatencyBudget) else None


def ensure_latency_model(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """The config a new search runs with: with a latency budget and no ``pruning.latency_model``,
    the model is measured into ``RUN_DIR/latency_model.json`` (reused when one for the same network,
    backend and batch is already there) and the returned config points at it. Otherwise ``cfg``.

    :param cfg: the resolved run config.
    :param run_dir: the run directory (created if needed).
    :raises ConfigError: the backend is not available on this machine (``torch-cuda`` without a GPU,
        ``onnxruntime-cpu`` without onnxruntime).
    """
    budget = latency_budget(cfg)
    if budget is None or cfg.pruning.latency_model is not None:
        return cfg
    from collabprune.models import build_generator

    path = (Path(run_dir) / LATENCY_MODEL_FILE).resolve()
    teacher = build_generator(cfg, inplace=False).eval()  # latency does not depend on the weights' values
    shape = (1, cfg.data.input_nc, cfg.data.crop_size, cfg.data.crop_size)  # Role.of needs the model
    groups = discover_groups(teacher, torch.zeros(shape))
    table = group_macs_table(teacher, groups, shape)
    model = None
    if path.is_file():
        try:
            model = load_latency_model(path)
            model.check_table(table, shape, str(path))
            if (model.backend, model.batch) != (budget.backend, budget.batch):
                model = None
        except ConfigError:
            model = None
    if model is None:
        try:
            model = fit_latency_model(teacher, table, shape, cfg.pruning, budget.backend, budget.batch,
                                      cfg.pruning.latency_samples)
        except RuntimeError as err:
            raise ConfigError(f"pruning.budget.generator.backend={budget.backend}: {err}".split("\n")[0]) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
    out = cfg.model_copy(deep=True)
    out.pruning.latency_model = path
    return out


def export_latency(cfg: RunConfig, teacher_g: nn.Module, net_g: nn.Module, kept: list[int]) -> dict[str, Any] | None:
    """The exported G against its latency budget: target, predicted and measured ms on the budget's backend.

    :param cfg: the run's config.
    :param teacher_g: the unpruned G.
    :param net_g: the exported (pruned) G.
    :param kept: its kept channels per group.
    :returns: ``{"backend", "batch", "target_ms", "predicted_ms", "measured_ms", "not_measured",
        "teacher_predicted_ms", "teacher_measured_ms", "model"}``, or None for a MACs budget;
        ``measured_ms`` is None (and ``not_measured`` says why) where the backend is not available.
    """
    budget = latency_budget(cfg)
    if budget is None:
        return None
    role = Role.of("generator", cfg)
    space = ChannelSpace.of("g", teacher_g, role.input_shape, cfg.pruning)
    model: LatencyModel = space.latency  # type: ignore[assignment]
    shape = (budget.batch, *role.input_shape[1:])
    try:
        measured: float | None = 1e3 * backend_latency_s(net_g, shape, budget.backend, repeats=20)
        why = None
    except RuntimeError as err:  # exported where the backend is missing (no GPU, no onnxruntime)
        measured, why = None, str(err).split("\n")[0]
    return {
        "backend": budget.backend, "batch": budget.batch, "target_ms": budget.latency_ms,
        "predicted_ms": float(space.cost_of_kept(kept)), "measured_ms": measured, "not_measured": why,
        "teacher_predicted_ms": model.teacher_predicted_ms, "teacher_measured_ms": model.teacher_ms,
        "model": str(cfg.pruning.latency_model),
    }


def describe(cfg: RunConfig) -> str:
    """One line about a run's measured latency model: backend, teacher latency, fit error, machine, file."""
    m = load_latency_model(cfg.pruning.latency_model)
    where = m.machine.get("cuda_device") if m.backend == "torch-cuda" else m.machine.get("cpu_model")
    return (f"latency model ({m.backend}, batch {m.batch}): teacher {m.teacher_ms:.2f} ms measured, "
            f"{m.teacher_predicted_ms:.2f} ms predicted; fit error {m.fit_error_pct:.1f}% over {m.fit_samples} "
            f"sub-networks on {where} ({cfg.pruning.latency_model})")


__all__ = ["describe", "ensure_latency_model", "export_latency", "latency_budget"]
