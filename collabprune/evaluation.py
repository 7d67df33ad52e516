"""One candidate pair -> metrics + reward (DESIGN.md §4), idempotent for (config, ratios, seed).

A candidate is a pair of keep-ratio vectors (one ratio per prunable group of G and of D). It is
pruned physically from the teacher pair (weights inherited), fine-tuned for ``finetune.steps``, and
scored on the reward split (held-out training data, never the test split):

- ``fid`` (or the labelled fallback ``fd_teacher_d``) of G_s outputs against the real targets;
- ``l_kde``, the local-density objective between teacher and student neighbourhoods;
- ``bal = |log(rho_s / rho_t)|``, the G-D balance against the teacher pair's;
- MACs (physical and published), params, and G/D MACs fractions of the teacher's.

``reward = -(w_fid * FID_s / FID_u + w_kde * L_kde_s / L_kde_u + w_bal * bal_s / bal_u)``, with
the ``_u`` values of the uniform candidate at the same budget (evaluated first, with no baseline).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from collabprune.config import RunConfig
from collabprune.data import reward_split, train_split
from collabprune.io import atomic_torch_save, atomic_write_json, atomic_write_text, file_sha256
from collabprune.metrics.fid import FidScorer, load_inception
from collabprune.metrics.macs import macs, macs_published, params
from collabprune.models import discriminator_kwargs, generator_kwargs
from collabprune.models.subnet import NETWORK_FILES, SPEC_FILES
from collabprune.objectives import balance_rho, balance_term, teacher_d_features
from collabprune.pruning.prune import prune_model
from collabprune.pruning.spec import SubnetSpec
from collabprune.pruning.space import ChannelSpace
from collabprune.finetune import FeatureMap, finetune_pair, kde_loss, make_feature_map
from collabprune.runtime import resolve_device, seed_everything
from collabprune.teacher import D_FILE, G_FILE, load_teacher

TEACHER_EVAL_FILE = "teacher_eval.json"
# Denominator floors of the reward's ratios: a uniform candidate that happens to be almost exactly
# balanced (bal_u ~ 0) or teacher-like (L_kde_u ~ 0) must not blow the terms up.
RATIO_FLOORS = {"fid": 1e-6, "l_kde": 1e-6, "bal": 0.05}


def reward_ratios(metrics: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """The unweighted ratios of DESIGN.md §4: ``FID_s / FID_u``, ``L_kde_s / L_kde_u``, ``bal_s / bal_u``.

    Each denominator is at least its :data:`RATIO_FLOORS` value. A metric that is missing or not
    finite (a diverged candidate) gives ``nan``.

    :param metrics: the candidate's metrics (``metrics["fd_metric"]`` names the FID key).
    :param baseline: the uniform candidate's metrics at the same budget.
    :returns: ``{"fid": ..., "kde": ..., "bal": ...}``.
    """
    keys = {"fid": metrics.get("fd_metric", "fid"), "kde": "l_kde", "bal": "bal"}
    floors = {"fid": RATIO_FLOORS["fid"], "kde": RATIO_FLOORS["l_kde"], "bal": RATIO_FLOORS["bal"]}
    out = {}
    for term, key in keys.items():
        value, base = metrics.get(key), baseline.get(key)
        finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (value, base))
        out[term] = value / max(base, floors[term]) if finite else math.nan
    return out


def compute_reward(metrics: dict[str, Any], baseline: dict[str, Any], cfg: RunConfig) -> tuple[float, dict[str, float]]:
    """The team reward of DESIGN.md §4 and its three terms.

    :param metrics: the candidate's metrics (``metrics["fd_metric"]`` names the FID key).
    :param baseline: the uniform candidate's metrics at the same budget.
    :returns: ``(reward, terms)``; ``terms`` are the weighted :func:`reward_ratios` (``fid``,
        ``kde``, ``bal``). -(w_fid + w_kde + w_bal) means "as good as uniform"; higher is better.
    """
    rc = cfg.reward
    weights = {"fid": rc.w_fid, "kde": rc.w_kde, "bal": rc.w_bal}
    terms = {term: weights[term] * ratio for term, ratio in reward_ratios(metrics, baseline).items()}
    return -sum(terms.values()), terms


class CandidateEvaluator:
    """Scores candidate (G, D) keep-ratio pairs of one run config.

    :param cfg: the run config (teacher checkpoint, data, pruning, reward, finetune sections).
    :param run_dir: where the real-statistics cache and the teacher evaluation are kept.
    :param device: ``cpu`` / ``cuda`` / ``auto``; defaults to ``finetune.device``.
    :raises CheckpointError: the teacher checkpoints are missing or do not match ``cfg.model``.
    :raises DatasetError: the dataset is missing or unreadable.
    :raises FidWeightsError: ``reward.fid.mode=fid`` and no Inception weights can be found.
    :raises BudgetError: a MACs budget is infeasible.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, device: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device or cfg.finetune.device)
        self.teacher_g, self.teacher_d = load_teacher(cfg, inplace=False)
        self.teacher_g.to(self.device).requires_grad_(False)
        self.teacher_d.to(self.device).requires_grad_(False)
        size = cfg.data.crop_size
        self.g_shape = (1, cfg.data.input_nc, size, size)
        self.d_shape = (1, cfg.data.input_nc + cfg.data.output_nc, size, size)
        self.g_space = ChannelSpace.of("g", self.teacher_g, self.g_shape, cfg.pruning)
        self.d_space = ChannelSpace.of("d", self.teacher_d, self.d_shape, cfg.pruning)
        self.g_space.check_budget(cfg.pruning.budget.generator)
        self.d_space.check_budget(cfg.pruning.budget.discriminator)
        self.train_data = train_split(cfg.data, train=True)
        held = reward_split(cfg.data)
        n = min(len(held), cfg.reward.fid.max_images)
        items = [held[i] for i in range(n)]
        self.real_a = torch.stack([it["A"] for it in items]).to(self.device)
        self.real_b = torch.stack([it["B"] for it in items]).to(self.device)
        ckpt = cfg.teacher.checkpoint_dir
        self.teacher_sha = {"G": file_sha256(ckpt / G_FILE), "D": file_sha256(ckpt / D_FILE)}
        self.scorer = FidScorer(
            cfg.reward.fid,
            self.run_dir / "fid_stats",
            self.device,
            teacher_features=lambda y: teacher_d_features(self.teacher_d, self.real_a[: len(y)], y),
            teacher_key=f"{self.teacher_sha['D']}:{len(self.real_a)}",
        )
        inception = None
        if cfg.reward.kde.features == "inception":
            assert self.scorer.weights_path is not None, "reward.kde.features=inception needs reward.fid.mode=fid"
            inception = load_inception(self.scorer.weights_path, cfg.reward.fid.dims, self.device)
        self.phi: FeatureMap = make_feature_map(cfg, self.teacher_d, inception)

    # ------------------------------------------------------------------ candidates

    def uniform_ratios(self) -> tuple[list[float], list[float]]:
        """The uniform candidate: one keep ratio per role, the largest that meets its budget."""
        b = self.cfg.pruning.budget
        rg = self.g_space.uniform_ratio(b.generator)
        rd = self.d_space.uniform_ratio(b.discriminator)
        return [rg] * self.g_space.num_groups, [rd] * self.d_space.num_groups

    def _score(self, net_g: nn.Module) -> dict[str, float]:
        """FID (or fallback) and L_kde of ``net_g`` on the reward split (eval mode, seeded)."""
        kc = self.cfg.reward.kde
        net_g.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            fake = net_g(self.real_a)
            fd = self.scorer.score(fake, self.real_b, "reward_split")
        t1 = time.perf_counter()
        with torch.no_grad():
            l_kde = kde_loss(net_g, self.teacher_g, self.phi, self.real_a[: kc.centres], self.cfg, self.cfg.search.seed).item()
        t2 = time.perf_counter()
        return {self.scorer.metric_name: fd, "l_kde": l_kde, "fid_s": t1 - t0, "kde_s": t2 - t1}

    def _costs(self, net_g: nn.Module, net_d: nn.Module) -> dict[str, float]:
        """MACs (both conventions), params and MACs fractions of a pair."""
        g_macs = macs(net_g, self.g_shape)
        d_macs = macs(net_d, self.d_shape)
        return {
            "g_macs": g_macs,
            "g_macs_published": macs_published(net_g, self.g_shape),
            "g_params": params(net_g),
            "d_macs": d_macs,
            "d_macs_published": macs_published(net_d, self.d_shape),
            "d_params": params(net_d),
            "g_macs_fraction": g_macs / self.g_space.teacher_macs,
            "d_macs_fraction": d_macs / self.d_space.teacher_macs,
        }

    def evaluate_teacher(self) -> dict[str, Any]:
        """The unpruned teacher pair: its metrics and ``rho`` (= rho_t), cached in the run directory.

        rho_t comes from the same fine-tuning procedure (``finetune.steps``, seed ``search.seed``)
        applied to a copy of the teacher pair; FID and L_kde are of the teacher itself (L_kde = 0).
        """
        path = self.run_dir / TEACHER_EVAL_FILE
        key = {"config": self.cfg.digest(), "teacher": self.teacher_sha}
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["result"]
        ones_g, ones_d = [1.0] * self.g_space.num_groups, [1.0] * self.d_space.num_groups
        result = self._run(ones_g, ones_d, self.cfg.search.seed, baseline=None, rho_t=None)
        atomic_write_json(path, {"key": key, "result": result})
        return result

    def evaluate(
        self,
        g_ratios: Sequence[float],
        d_ratios: Sequence[float],
        seed: int,
        baseline: dict[str, Any] | None,
        save_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Prune, fine-tune and score one candidate pair.

        :param g_ratios: keep ratio per generator group (network order), each in (0, 1].
        :param d_ratios: keep ratio per discriminator group.
        :param seed: seeds fine-tuning batches, perturbations and dropout.
        :param baseline: the uniform candidate's ``metrics``; ``None`` for the uniform candidate
            itself, which is then its own baseline (reward -(w_fid + w_kde + w_bal)).
        :param save_dir: when given, the fine-tuned pair is written there (:func:`save_candidate`),
            so an export reproduces exactly the network that was scored.
        :returns: JSON-able dict: ``g_ratios``, ``d_ratios``, ``g_channels``, ``d_channels``,
            ``metrics``, ``reward``, ``reward_terms``, ``diverged``, ``times`` (seconds).
        :raises ValueError: a ratio vector of the wrong length or with values outside (0, 1].
        """
        rho_t = self.evaluate_teacher()["metrics"]["rho"]
        return self._run(list(g_ratios), list(d_ratios), seed, baseline, rho_t, save_dir)

    def _run(
        self,
        g_ratios: list[float],
        d_ratios: list[float],
        seed: int,
        baseline: dict[str, Any] | None,
        rho_t: float | None,
        save_dir: Path | None = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        seed_everything(seed)
        example_g = torch.zeros(self.g_shape, device=self.device)
        example_d = torch.zeros(self.d_shape, device=self.device)
        net_g, g_spec = prune_model(self.teacher_g, example_g, g_ratios, self.cfg.pruning, seed,
                                    generator_kwargs(self.cfg, inplace=False))
        net_d, d_spec = prune_model(self.teacher_d, example_d, d_ratios, self.cfg.pruning, seed,
                                    discriminator_kwargs(self.cfg, inplace=False))
        net_g.requires_grad_(True)
        net_d.requires_grad_(True)
        t_prune = time.perf_counter() - t0
        metrics: dict[str, Any] = self._costs(net_g, net_d)
        metrics["fd_metric"] = self.scorer.metric_name
        out: dict[str, Any] = {
            "g_ratios": g_ratios,
            "d_ratios": d_ratios,
            "g_channels": g_spec.kept,
            "d_channels": d_spec.kept,
            "seed": seed,
            "metrics": metrics,
            "reward": None,
            "reward_terms": {},
            "diverged": False,
        }
        is_teacher = rho_t is None
        ft = finetune_pair(
            copy.deepcopy(net_g) if is_teacher else net_g, net_d, self.teacher_g, self.phi,
            self.train_data, self.cfg, self.cfg.finetune.steps, seed, self.device,
        )
        rho = balance_rho(ft.d_losses, ft.g_adv_losses) if ft.steps and not ft.diverged else float("nan")
        scores = self._score(net_g) if not ft.diverged else {}
        out["times"] = {
            "prune_s": t_prune,
            "finetune_s": ft.seconds,
            "fid_s": scores.pop("fid_s", 0.0),
            "kde_s": scores.pop("kde_s", 0.0),
        }
        metrics.update(scores)
        metrics["rho"] = rho
        metrics["bal"] = 0.0 if is_teacher else balance_term(rho, rho_t) if math.isfinite(rho) and rho > 0 else float("nan")
        values = [metrics.get(k) for k in (self.scorer.metric_name, "l_kde", "bal")]
        if ft.diverged or not all(v is not None and math.isfinite(v) for v in values):
            out["diverged"] = True
            out["reward"] = self.cfg.reward.penalty
            out["reward_terms"] = {"penalty": self.cfg.reward.penalty}
        elif not is_teacher:  # the uniform candidate (baseline None) is its own baseline
            out["reward"], out["reward_terms"] = compute_reward(metrics, baseline or metrics, self.cfg)
        if save_dir is not None and not out["diverged"]:
            save_candidate(Path(save_dir), net_g, g_spec, net_d, d_spec)
        out["times"]["total_s"] = time.perf_counter() - t0
        return _finite_json(out)


def save_candidate(folder: Path, net_g: nn.Module, g_spec: SubnetSpec, net_d: nn.Module, d_spec: SubnetSpec) -> None:
    """Write a pruned pair as specs (JSON) + state dicts (CPU tensors), each file atomically."""
    for role, net, spec in (("generator", net_g, g_spec), ("discriminator", net_d, d_spec)):
        atomic_write_text(folder / SPEC_FILES[role], spec.to_json(indent=1))
        atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / NETWORK_FILES[role])


def _finite_json(obj: Any) -> Any:
    """Replace NaN/inf floats by ``None`` so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def evaluate_one(
    cfg: RunConfig, g_ratios: list[float] | None, d_ratios: list[float] | None, run_dir: Path | None = None
) -> dict[str, Any]:
    """Evaluate the teacher, the uniform candidate and one hand-chosen candidate (``evaluate`` CLI).

    :param g_ratios: generator keep ratios; ``None`` -> the uniform candidate's.
    :param d_ratios: discriminator keep ratios; ``None`` -> the uniform candidate's.
    :param run_dir: cache folder (default ``output.run_dir``).
    :returns: ``{"teacher": ..., "uniform": ..., "candidate": ...}`` evaluation dicts.
    """
    ev = CandidateEvaluator(cfg, run_dir or cfg.output.run_dir)
    teacher = ev.evaluate_teacher()
    ug, ud = ev.uniform_ratios()
    seed = cfg.search.seed
    uniform = ev.evaluate(ug, ud, seed, baseline=None)
    candidate = ev.evaluate(g_ratios or ug, d_ratios or ud, seed, baseline=uniform["metrics"])
    return {"teacher": teacher, "uniform": uniform, "candidate": candidate}
