"""Latency budgets: the measured latency model, the projection onto a latency target, errors.

The model is fitted on real timings of a tiny generator's sub-networks (a few milliseconds each), so
its coefficients are whatever this machine measures; the properties checked do not depend on them:
non-negative coefficients make the prediction monotone in every group's kept channels, and every
projected proposal's predicted latency is within the target. A search with a latency budget runs in
tests/test_agents.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from collabprune.config import RunConfig
from collabprune.errors import BudgetError, ConfigError
from collabprune.latency_budget import ensure_latency_model, export_latency
from collabprune.models import build_generator
from collabprune.pruning.latency_model import load_latency_model
from collabprune.pruning.prune import prune_model
from collabprune.pruning.roles import Role
from collabprune.runs import LATENCY_MODEL_FILE
from envs.space import RoleSpace

SAMPLES = 8


def _cfg(target: float | None = None, backend: str = "torch-cpu", model: Path | None = None) -> RunConfig:
    budget = 0.3 if target is None else {"latency_ms": target, "backend": backend}
    return RunConfig.model_validate({
        "model": {"net_g": "unet_128", "ngf": 8, "ndf": 8},
        "data": {"crop_size": 128, "load_size": 128},
        "pruning": {"round_to": 2, "min_channels": 2, "r_min": 0.1, "latency_samples": SAMPLES,
                    "latency_model": model, "budget": {"generator": budget, "discriminator": 0.5}},
    })


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    """A config with a latency budget (placeholder target) whose model was measured into a run folder."""
    run_dir = tmp_path_factory.mktemp("run")
    return ensure_latency_model(_cfg(target=1.0), run_dir)


def test_model_is_measured_once_into_the_run_and_reused(measured: RunConfig) -> None:
    path = measured.pruning.latency_model
    assert path is not None and path.name == LATENCY_MODEL_FILE and path.is_file()
    model = load_latency_model(path)
    assert model.backend == "torch-cpu" and model.batch == 1 and model.fit_samples == SAMPLES
    assert model.teacher_ms > 0 and all(c >= 0 for c in model.coef_ms)
    assert model.machine["cpu_cores"] >= 1 and "torch" in model.machine
    stamp = path.stat().st_mtime_ns
    again = ensure_latency_model(_cfg(target=2.0), path.parent)  # same network, backend, batch: reused
    assert again.pruning.latency_model == path and path.stat().st_mtime_ns == stamp
    assert ensure_latency_model(measured, path.parent) is measured  # already set: nothing to do
    plain = _cfg()
    assert ensure_latency_model(plain, path.parent) is plain  # a MACs budget needs no model


def test_prediction_is_monotone_in_every_group(measured: RunConfig) -> None:
    space = RoleSpace.from_config("generator", _cfg(1e3, model=measured.pruning.latency_model)).channels
    assert space.latency is not None and space.unit.startswith("the teacher's predicted torch-cpu latency")
    rng = np.random.default_rng(0)
    chan = space.table.channels
    for _ in range(50):
        kept = np.array([rng.integers(2, c + 1) for c in chan])
        base = space.cost_of_kept(kept)
        g = rng.integers(len(chan))
        more = kept.copy()
        more[g] = min(chan[g], kept[g] + 2)
        assert space.cost_of_kept(more) >= base - 1e-12
    assert space.cost_of_kept(chan) == pytest.approx(space.teacher_cost)


def test_every_proposal_respects_the_latency_budget(measured: RunConfig) -> None:
    model = load_latency_model(measured.pruning.latency_model)
    # a tiny network's latency is mostly fixed overhead: every group at r_min still takes ~60% of it on an
    # idle machine, more when the timings were taken under load; the target lies above that floor
    probe = RoleSpace.from_config("generator", _cfg(model.teacher_predicted_ms, model=measured.pruning.latency_model))
    floor = probe.channels.cost_of_kept(probe.channels.kept([0.1] * probe.n_groups)) / model.teacher_predicted_ms
    fraction = max(0.8, (1.0 + floor) / 2)
    target = fraction * model.teacher_predicted_ms
    cfg = _cfg(target, model=measured.pruning.latency_model)
    g = RoleSpace.from_config("generator", cfg)
    assert g.budget == pytest.approx(fraction)  # the target as a fraction of the teacher's predicted latency
    space = g.channels
    rng = np.random.default_rng(1)
    used = []
    for _ in range(100):
        actions = rng.uniform(-1, 1, g.n_decisions)
        ratios = g.project(g.expand([g.action_to_ratio(a) for a in actions]))
        ms = space.cost_of_kept(space.kept(ratios))
        assert ms <= target * (1 + 1e-9), (ms, target)
        used.append(ms / target)
    assert min(used) >= 0.9, min(used)  # the fill spends the budget (MACs budgets guarantee 98%)
    assert g.uniform_candidate() == g.project([g.uniform] * g.n_groups)  # the zero action: uniform
    # the discriminator keeps its MACs budget
    d = RoleSpace.from_config("discriminator", cfg)
    assert d.channels.latency is None and d.budget == 0.5

    # the exported G is measured on the backend next to the prediction
    teacher = build_generator(cfg, inplace=False).eval()
    net, spec = prune_model(teacher, torch.zeros(1, 3, 128, 128), g.uniform_candidate(), cfg.pruning)
    report = export_latency(cfg, teacher, net, spec.kept)
    assert report is not None and report["target_ms"] == target and report["backend"] == "torch-cpu"
    assert report["predicted_ms"] <= target * (1 + 1e-9) and report["measured_ms"] > 0
    assert report["teacher_measured_ms"] == model.teacher_ms
    assert export_latency(_cfg(), teacher, net, spec.kept) is None


def test_latency_budget_errors(measured: RunConfig) -> None:
    with pytest.raises(ConfigError, match="needs its measured latency model") as err:
        Role.of("generator", _cfg(1.0))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="measured on torch-cpu at batch 1, the budget asks for onnxruntime-cpu"):
        RoleSpace.from_config("generator", _cfg(1.0, backend="onnxruntime-cpu", model=measured.pruning.latency_model))
    with pytest.raises(ConfigError, match="cannot read the latency model"):
        Role.of("generator", _cfg(1.0, model=Path("/nonexistent/latency_model.json")))
    tiny = 1e-6  # below what every group at r_min is predicted to take
    with pytest.raises(BudgetError, match="of the teacher's predicted torch-cpu latency .* is infeasible"):
        RoleSpace.from_config("generator", _cfg(tiny, model=measured.pruning.latency_model))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="backend=torch-cuda: latency backend torch-cuda: no CUDA device"):
            ensure_latency_model(_cfg(1.0, backend="torch-cuda"), measured.pruning.latency_model.parent)


def test_a_latency_run_resumes_where_it_moves_and_rejects_another_network(measured: RunConfig, tmp_path: Path) -> None:
    """The run digest counts the model by its content, not its path, and ``resume_config`` points a
    moved run at its own ``latency_model.json``; a model of another network is refused."""
    import shutil

    from collabprune.runs import RunDir, resume_config, run_digest

    model = load_latency_model(measured.pruning.latency_model)
    cfg = _cfg(0.8 * model.teacher_predicted_ms, model=measured.pruning.latency_model)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(measured.pruning.latency_model, run / LATENCY_MODEL_FILE)
    cfg.pruning.latency_model = (run / LATENCY_MODEL_FILE).resolve()
    RunDir.create(run, cfg)
    digest = run_digest(cfg)
    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    again = resume_config(moved)
    assert again.pruning.latency_model == (moved / LATENCY_MODEL_FILE).resolve()
    assert run_digest(again) == digest
    RunDir.open(moved, again)  # resumes: same digest
    data = load_latency_model(again.pruning.latency_model).to_dict()
    data["coef_ms"] = [data["coef_ms"][0] + 1.0, *data["coef_ms"][1:]]
    (moved / LATENCY_MODEL_FILE).write_text(json.dumps(data))
    assert run_digest(resume_config(moved)) != digest  # another model: another experiment

    wider = RunConfig.model_validate({**again.to_dict(), "model": {**cfg.model.model_dump(), "ngf": 12}})
    with pytest.raises(ConfigError, match="measured on another network"):
        RoleSpace.from_config("generator", wider)
