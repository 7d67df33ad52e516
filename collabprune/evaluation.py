"""One candidate pair -> metrics + reward (DESIGN.md §4), idempotent for (config, ratios, seed).

A candidate is a pair of keep-ratio vectors (one ratio per prunable group of G and of D). It is
pruned physically from the teacher pair (weights inherited), its BatchNorm statistics are
re-estimated on training batches (adaptive BN), it is fine-tuned for ``finetune.steps``, and scored
on the reward split (held-out training data, never the test split):

- ``fid`` (or the labelled fallback ``fd_teacher_d``) of G_s outputs against the real targets;
- ``l_kde``, the local-density objective between teacher and student neighbourhoods;
- ``bal = |log(rho_s / rho_t)|``, the G-D balance against the teacher pair's;
- for paired data, ``l1`` (G's outputs to the split's targets) and ``pull``, the adversarial pull of D_s
  on those outputs (:func:`collabprune.objectives.pull.adversarial_pull`);
- MACs (physical and published), params, and G/D MACs fractions of the teacher's.

Reward (DESIGN.md §4): ``reward = -(w_fid * t_fid + w_kde * t_kde + w_bal * t_bal)`` with
``t = clip(x_s / x_u, 0, c_max)``, the ``_u`` values being the uniform candidate's at the same budget,
averaged over ``reward.uniform_seeds`` seeds. A valid candidate therefore scores in
``[-(w_fid + w_kde + w_bal) * c_max, 0]``, always above the penalty of a diverged one. The optional
terms ``w_l1 * t_l1`` and ``w_pull * t_pull`` (paired data; weights 0 by default) are bounded the same way.
The discriminator agent learns from ``w_team_d * reward - w_pull_d * t_pull`` (:func:`discriminator_reward`):
for paired data ``-t_pull`` by default, for unpaired data the team reward (DESIGN.md §4).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from collabprune.config import FD_METRICS, RunConfig
from collabprune.data import reward_split, train_split
from collabprune.finetune import FinetuneResult, finetune_pair, recalibrate_batchnorm, training_batches
from collabprune.io import atomic_torch_save, atomic_write_json, atomic_write_text, file_sha256
from collabprune.metrics.fid import FidScorer
from collabprune.metrics.inception import load_inception
from collabprune.metrics.macs import macs, macs_published, params
from collabprune.models import discriminator_kwargs, family_of, generator_kwargs
from collabprune.models.spec import SubnetSpec
from collabprune.models.subnet import NETWORK_FILES, SPEC_FILES
from collabprune.objectives import GANLoss, adversarial_pull, balance_rho, balance_term, teacher_d_features
from collabprune.objectives.kde import FeatureMap, kde_loss, make_feature_map
from collabprune.pruning.prune import prune_model
from collabprune.pruning.roles import generator_budgets, roles
from collabprune.pruning.space import ChannelSpace
from collabprune.records import EvalTimes, EvaluationRecord, Metrics, SeedResult
from collabprune.runtime import resolve_device, seed_everything
from collabprune.teacher_checkpoints import load_teacher

TEACHER_EVAL_FILE = "teacher_eval.json"
# Denominator floors of the reward's ratios: a uniform candidate that happens to be almost exactly
# balanced (bal_u ~ 0) or teacher-like (L_kde_u ~ 0) must not blow the terms up.
RATIO_FLOORS = {"fid": 1e-6, "l_kde": 1e-6, "bal": 0.05, "l1": 1e-6, "pull": 1e-6}
#: The metrics that the uniform baseline averages over its seeds (costs are the same for every seed).
AVERAGED_METRICS = (*FD_METRICS, "l_kde", "rho", "bal", "l1", "pull")
#: Terms beyond DESIGN.md §4's three, each with its metric (paired data only); a term enters the ratios when
#: either record has its metric, and the reward when its weight (``reward.w_<term>``) is above 0.
OPTIONAL_TERMS = ("l1", "pull")


def reward_ratios(metrics: Mapping[str, Any], baseline: Mapping[str, Any], c_max: float = math.inf) -> dict[str, float]:
    """The terms of DESIGN.md §4 before weighting: ``t = clip(x_s / x_u, 0, c_max)`` for FID, L_kde, bal,
    and for the :data:`OPTIONAL_TERMS` of paired data: the reward-split ground-truth L1 (``l1``, weighted
    by ``reward.w_l1``) and the adversarial pull (``pull``, weighted by ``reward.w_pull``).

    Each denominator is at least its :data:`RATIO_FLOORS` value. A metric that is missing or not
    finite (a diverged candidate) gives ``nan``.

    :param metrics: the candidate's metrics (``metrics["fd_metric"]`` names the FID key).
    :param baseline: the uniform candidate's metrics at the same budget (seed-averaged).
    :param c_max: the upper clip of each term (``reward.c_max``).
    :returns: ``{"fid": ..., "kde": ..., "bal": ...}``, and ``"l1"`` / ``"pull"`` when either record has
        that metric (``nan`` when the other lacks it, as for any missing metric).
    """
    keys = {"fid": metrics.get("fd_metric", "fid"), "kde": "l_kde", "bal": "bal"}
    floors = {"fid": RATIO_FLOORS["fid"], "kde": RATIO_FLOORS["l_kde"], "bal": RATIO_FLOORS["bal"],
              **{term: RATIO_FLOORS[term] for term in OPTIONAL_TERMS}}
    for term in OPTIONAL_TERMS:
        if metrics.get(term) is not None or baseline.get(term) is not None:
            keys[term] = term
    out = {}
    for term, key in keys.items():
        value, base = metrics.get(key), baseline.get(key)
        finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (value, base))
        out[term] = min(c_max, max(0.0, value / max(base, floors[term]))) if finite else math.nan
    return out


def compute_reward(metrics: Mapping[str, Any], baseline: Mapping[str, Any], cfg: RunConfig) -> tuple[float, dict[str, float]]:
    """The team reward of DESIGN.md §4 and its weighted terms.

    :param metrics: the candidate's metrics (``metrics["fd_metric"]`` names the FID key).
    :param baseline: the uniform candidate's seed-averaged metrics at the same budget.
    :returns: ``(reward, terms)``; ``terms`` are the weighted :func:`reward_ratios` (``fid``,
        ``kde``, ``bal``, and ``l1`` / ``pull`` when ``reward.w_l1`` / ``reward.w_pull`` is above 0). Minus
        the sum of the weights means "as good as uniform"; higher is better; the reward is never below
        minus that sum times ``c_max``.
    """
    weights = cfg.reward.weights()
    ratios = reward_ratios(metrics, baseline, cfg.reward.c_max)
    terms = {term: weights[term] * ratio for term, ratio in ratios.items()
             if term not in OPTIONAL_TERMS or weights[term] > 0}  # weight 0: DESIGN.md §4's three terms
    return -sum(terms.values()), terms


def discriminator_reward(team_reward: float, metrics: Mapping[str, Any], baseline: Mapping[str, Any],
                         cfg: RunConfig) -> float:
    """What the discriminator agent learns from: ``w_team_d * team_reward - w_pull_d * t_pull``
    (``reward.w_team_d``, ``reward.w_pull_d``).

    The D agent's action decides D given G's proposal, and D's adversarial pull ``t_pull = clip(pull_s /
    pull_u, 0, c_max)`` (:func:`reward_ratios`) ranks the Ds of one G like their held-out result where
    the team reward hardly sees D (README, "The adversarial pull"); crediting it to the D agent alone
    leaves the team reward, ``best.json``, the G agent and every non-RL search unchanged. The team
    reward varies mostly with G's proposal, which D does not choose; ``w_team_d < 1`` takes that
    variance out of what D learns from.

    :param team_reward: the candidate's reward (:func:`compute_reward`), finite.
    :param metrics: the candidate's metrics (``pull`` measured: paired data, ``finetune.lambda_l1 > 0``).
    :param baseline: the uniform candidate's seed-averaged metrics at the same budget.
    :returns: ``team_reward`` itself with ``w_team_d`` 1 and ``w_pull_d`` 0 (unpaired data's default), ``-t_pull``
        with 0 and 1 (paired data's default, :meth:`RunConfig._d_agent_reward`); a missing or
        non-finite ``t_pull`` counts as its bound ``c_max``. Never below the team reward's floor minus
        ``w_pull_d * c_max``, so a diverged candidate's penalty stays the lowest.
    """
    weight, team = cfg.reward.w_pull_d, cfg.reward.w_team_d
    if weight == 0:
        return team * team_reward
    t_pull = reward_ratios(metrics, baseline, cfg.reward.c_max).get("pull", math.nan)
    return team * team_reward - weight * (t_pull if math.isfinite(t_pull) else cfg.reward.c_max)


def average_metrics(results: Sequence[EvaluationRecord]) -> Metrics:
    """Seed-averaged metrics of several evaluations of one candidate (the uniform baseline).

    :param results: evaluations of the same ratios with different seeds (none diverged).
    :returns: the first result's metrics with :data:`AVERAGED_METRICS` replaced by their means over
        the results where they are finite.
    :raises ValueError: no results.
    """
    if not results:
        raise ValueError("average_metrics: no evaluations to average")
    out = Metrics(results[0].metrics)
    for key in AVERAGED_METRICS:
        finite = [v for v in (r.metrics.number(key) for r in results) if v is not None]
        if key in out or finite:
            out[key] = statistics.fmean(finite) if finite else None
    return out


@dataclass
class TrainedPair:
    """A pruned, BatchNorm-recalibrated and fine-tuned candidate pair.

    :param net_g: the pruned generator (B, C_in, H, W) -> (B, C_out, H, W), on the evaluator's device.
    :param net_d: the pruned discriminator.
    :param g_spec: the generator's sub-network spec.
    :param d_spec: the discriminator's sub-network spec.
    :param finetune: what fine-tuning recorded (losses per step, divergence, seconds).
    :param prune_s: seconds spent pruning and recalibrating BatchNorm.
    """

    net_g: nn.Module
    net_d: nn.Module
    g_spec: SubnetSpec
    d_spec: SubnetSpec
    finetune: FinetuneResult
    prune_s: float


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
        self.family = family_of(cfg)
        self.teacher_g, self.teacher_d, files = load_teacher(cfg, inplace=False, run_dir=self.run_dir)
        self.teacher_g.to(self.device).requires_grad_(False)
        self.teacher_d.to(self.device).requires_grad_(False)
        g_role, d_role = roles(cfg)
        self.g_shape, self.d_shape = g_role.input_shape, d_role.input_shape
        self.g_space = ChannelSpace.of("g", self.teacher_g, self.g_shape, cfg.pruning)
        self.d_space = ChannelSpace.of("d", self.teacher_d, self.d_shape, cfg.pruning)
        self.g_budget, self.d_budget = g_role.budget, d_role.budget
        for budget in generator_budgets(cfg):  # a multi-budget search's every generator budget
            self.g_space.check_budget(budget)
        self.d_space.check_budget(self.d_budget)
        self.train_data = train_split(cfg.data, train=True)
        held = reward_split(cfg.data)
        n = min(len(held), cfg.reward.fid.max_images)
        items = [held[i] for i in range(n)]
        self.real_a = torch.stack([it["A"] for it in items]).to(self.device)
        self.real_b = torch.stack([it["B"] for it in items]).to(self.device)
        self.teacher_sha = {"G": file_sha256(files.g), "D": file_sha256(files.d)}
        self.scorer = FidScorer(
            cfg.reward.fid,
            self.run_dir / "fid_stats",
            self.device,
            teacher_features=lambda y: teacher_d_features(
                self.teacher_d, self.real_a[: len(y)] if self.family.conditional_d else None, y),
            teacher_key=f"{self.teacher_sha['D']}:{len(self.real_a)}",
        )
        inception = None
        if cfg.reward.kde.features == "inception":
            assert self.scorer.weights_path is not None, "reward.kde.features=inception needs reward.fid.mode=fid"
            inception = load_inception(self.scorer.weights_path, cfg.reward.fid.dims, self.device)
        self.phi: FeatureMap = make_feature_map(cfg, self.teacher_d, inception)
        self.gan_loss = GANLoss(cfg.teacher.gan_mode).to(self.device)

    # ------------------------------------------------------------------ candidates

    def space_digests(self) -> dict[str, str]:
        """``{"generator": digest, "discriminator": digest}`` of the spaces candidates are pruned in
        (:attr:`collabprune.pruning.space.ChannelSpace.digest`)."""
        return {"generator": self.g_space.digest, "discriminator": self.d_space.digest}

    def uniform_ratios(self, g_budget: float | None = None) -> tuple[list[float], list[float]]:
        """The uniform candidate of each role at its budget (:meth:`ChannelSpace.uniform_candidate`:
        one keep ratio for every group, projected so that it uses the budget like every candidate).

        :param g_budget: the generator budget (a multi-budget search's, ``search.budgets``); default
            the run's primary one.
        """
        g_budget = self.g_budget if g_budget is None else float(g_budget)
        return self.g_space.uniform_candidate(g_budget), self.d_space.uniform_candidate(self.d_budget)

    def _score(self, net_g: nn.Module, net_d: nn.Module | None = None) -> dict[str, float]:
        """FID (or fallback) and L_kde of ``net_g`` on the reward split (eval mode, seeded), and for
        paired data the mean absolute difference to the split's targets (``l1``, images in [-1, 1]) and,
        given ``net_d`` (put in eval mode) and ``finetune.lambda_l1 > 0``, its adversarial pull on those
        outputs (``pull``, :func:`adversarial_pull`)."""
        kc = self.cfg.reward.kde
        net_g.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            fake = torch.cat([net_g(self.real_a[i:i + 16]) for i in range(0, len(self.real_a), 16)])
            fd = self.scorer.score(fake, self.real_b, "reward_split")
            paired = {"l1": float((fake - self.real_b).abs().mean().item())} if self.family.paired else {}
        if self.family.paired and net_d is not None and self.cfg.finetune.lambda_l1 > 0:
            net_d.eval()
            paired["pull"] = adversarial_pull(net_d, self.family.d_input, self.real_a, fake, self.real_b, self.gan_loss,
                                              self.cfg.finetune.lambda_l1)
        t1 = time.perf_counter()
        with torch.no_grad():
            l_kde = kde_loss(net_g, self.teacher_g, self.phi, self.real_a[: kc.centres], self.cfg, self.cfg.search.seed).item()
        t2 = time.perf_counter()
        return {self.scorer.metric_name: fd, "l_kde": l_kde, **paired, "fid_s": t1 - t0, "kde_s": t2 - t1}

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

    def evaluate_teacher(self) -> EvaluationRecord:
        """The unpruned teacher pair: its metrics and ``rho`` (= rho_t), cached in the run directory.

        rho_t comes from the same fine-tuning procedure (``finetune.steps``, seed ``search.seed``)
        applied to a copy of the teacher pair; FID and L_kde are of the teacher itself (L_kde = 0).
        """
        path = self.run_dir / TEACHER_EVAL_FILE
        key = {"config": self.cfg.digest(), "teacher": self.teacher_sha}
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return EvaluationRecord.from_dict(cached["result"])
        ones_g, ones_d = [1.0] * self.g_space.num_groups, [1.0] * self.d_space.num_groups
        result = self._run(ones_g, ones_d, self.cfg.search.seed, baseline=None, rho_t=None)
        atomic_write_json(path, {"key": key, "result": result.to_dict()})
        return result

    def uniform_seeds(self, seed: int) -> list[int]:
        """The seeds the uniform baseline is averaged over: ``seed, seed + 1, ...`` (``reward.uniform_seeds``)."""
        return [seed + i for i in range(self.cfg.reward.uniform_seeds)]

    def evaluate_uniform(self, seed: int, save_dir: Path | None = None, g_budget: float | None = None) -> EvaluationRecord:
        """The reward baseline: the uniform candidate evaluated with :meth:`uniform_seeds`, averaged.

        :param seed: the first seed (the search's common seed, so the first evaluation shares the
            candidates' random numbers).
        :param save_dir: where the first seed's fine-tuned pair is saved.
        :param g_budget: the generator budget (:meth:`uniform_ratios`); default the primary one.
        :returns: an evaluation record whose ``metrics`` are the seed averages (:func:`average_metrics`)
            and whose ``seed_results`` hold each seed's metrics; its reward is minus the sum of the weights
            up to the ratio floors. A uniform candidate that diverges under some seed is averaged
            over the others; one that diverges under every seed is returned as diverged.
        """
        g, d = self.uniform_ratios(g_budget)
        results = [self.evaluate(g, d, s, baseline=None, save_dir=save_dir if i == 0 else None)
                   for i, s in enumerate(self.uniform_seeds(seed))]
        ok = [r for r in results if not r.diverged]
        out = dataclasses.replace(
            results[0],
            seed_results=[SeedResult(seed=int(r.seed or 0), metrics=r.metrics, diverged=r.diverged) for r in results],
            times=EvalTimes.total([r.times for r in results]),
        )
        if ok:
            out.metrics = average_metrics(ok)
            out.diverged = False
            out.reward, out.reward_terms = compute_reward(out.metrics, out.metrics, self.cfg)
        return _finite_record(out)

    def evaluate(
        self,
        g_ratios: Sequence[float],
        d_ratios: Sequence[float],
        seed: int,
        baseline: Mapping[str, Any] | None,
        save_dir: Path | None = None,
    ) -> EvaluationRecord:
        """Prune, recalibrate BatchNorm, fine-tune and score one candidate pair.

        :param g_ratios: keep ratio per generator group (network order), each in (0, 1].
        :param d_ratios: keep ratio per discriminator group.
        :param seed: seeds fine-tuning batches, perturbations and dropout.
        :param baseline: the uniform candidate's seed-averaged ``metrics``; ``None`` for the uniform
            candidate itself, which is then its own baseline (reward: minus the sum of the weights).
        :param save_dir: when given, the fine-tuned pair is written there (:func:`save_candidate`),
            so an export reproduces exactly the network that was scored.
        :returns: the record (no round or slot yet): ``seed``, ``g_ratios``, ``d_ratios``, ``g_channels``,
            ``d_channels``, ``metrics``, ``reward``, ``reward_terms``, ``diverged``, ``times`` (seconds);
            non-finite numbers are ``None``.
        :raises ValueError: a ratio vector of the wrong length or with values outside (0, 1].
        """
        rho_t = self.evaluate_teacher().metrics.rho
        return self._run(list(g_ratios), list(d_ratios), seed, baseline, rho_t, save_dir)

    def train_pair(self, g_ratios: Sequence[float], d_ratios: Sequence[float], seed: int, steps: int,
                   keep_teacher: bool = False, lr: float | None = None) -> TrainedPair:
        """Prune both networks from the teacher pair, recalibrate BatchNorm, fine-tune ``steps`` steps.

        :param g_ratios: keep ratio per generator group, each in (0, 1].
        :param d_ratios: keep ratio per discriminator group.
        :param seed: seeds pruning ties, the BatchNorm batches, fine-tuning batches and dropout.
        :param steps: fine-tuning steps (``finetune.steps`` in the search, ``final_steps`` for finalists).
        :param keep_teacher: all ratios 1: skip adaptive BN (the teacher's statistics are its own).
        :param lr: the fine-tuning's learning rate (None: ``finetune.lr``).
        :raises ValueError: a ratio vector of the wrong length or with values outside (0, 1].
        """
        t0 = time.perf_counter()
        seed_everything(seed)
        example_g = torch.zeros(self.g_shape, device=self.device)
        example_d = torch.zeros(self.d_shape, device=self.device)
        net_g, g_spec = prune_model(self.teacher_g, example_g, list(g_ratios), self.cfg.pruning, seed,
                                    generator_kwargs(self.cfg, inplace=False))
        net_d, d_spec = prune_model(self.teacher_d, example_d, list(d_ratios), self.cfg.pruning, seed,
                                    discriminator_kwargs(self.cfg, inplace=False))
        net_g.requires_grad_(True)
        net_d.requires_grad_(True)
        if not keep_teacher:
            self.recalibrate(net_g, net_d, seed)
        prune_s = time.perf_counter() - t0
        ft = finetune_pair(net_g, net_d, self.teacher_g, self.phi, self.train_data, self.cfg, steps, seed, self.device,
                           lr)
        return TrainedPair(net_g, net_d, g_spec, d_spec, ft, prune_s)

    def recalibrate(self, net_g: nn.Module, net_d: nn.Module, seed: int) -> int:
        """Adaptive BN on ``finetune.bn_recalibration_batches`` training batches (seeded): G on the
        inputs, D on real and generated pairs. :returns: BatchNorm layers recalibrated."""
        n = self.cfg.finetune.bn_recalibration_batches
        if n <= 0:
            return 0
        batches = []
        for _, item in zip(range(n), training_batches(self.train_data, self.cfg.finetune.batch_size, seed + 7919)):
            batches.append((item["A"].to(self.device), item["B"].to(self.device)))

        def forward(a: torch.Tensor, b: torch.Tensor) -> None:
            fake = net_g(a)
            net_d(self.family.d_input(a, b))
            net_d(self.family.d_input(a, fake))

        return recalibrate_batchnorm([net_g, net_d], batches, forward)

    def _run(
        self,
        g_ratios: list[float],
        d_ratios: list[float],
        seed: int,
        baseline: Mapping[str, Any] | None,
        rho_t: float | None,
        save_dir: Path | None = None,
    ) -> EvaluationRecord:
        t0 = time.perf_counter()
        is_teacher = rho_t is None
        pair = self.train_pair(g_ratios, d_ratios, seed, self.cfg.finetune.steps, keep_teacher=is_teacher,
                               lr=self.cfg.finetune.search_lr)
        net_g, net_d, ft = pair.net_g, pair.net_d, pair.finetune
        metrics = Metrics(self._costs(net_g, net_d))
        metrics["fd_metric"] = self.scorer.metric_name
        out = EvaluationRecord(seed=seed, g_ratios=g_ratios, d_ratios=d_ratios, g_channels=list(pair.g_spec.kept),
                               d_channels=list(pair.d_spec.kept), metrics=metrics)
        window = self.cfg.reward.balance_window
        rho = balance_rho(ft.d_losses, ft.g_adv_losses, window) if ft.steps and not ft.diverged else float("nan")
        # the teacher's own outputs are scored (L_kde = 0); its fine-tuned copy only gives rho_t
        scores = (self._score(self.teacher_g) if is_teacher else self._score(net_g, net_d)) if not ft.diverged else {}
        out.times = EvalTimes(prune_s=pair.prune_s, finetune_s=ft.seconds, fid_s=scores.pop("fid_s", 0.0),
                              kde_s=scores.pop("kde_s", 0.0))
        metrics.update(scores)
        metrics["rho"] = rho
        metrics["bal"] = 0.0 if is_teacher else balance_term(rho, rho_t) if math.isfinite(rho) and rho > 0 else float("nan")
        # the teacher has no reward (and no pull: it is scored without D), only rho_t
        weights = self.cfg.reward.weights()
        weighted = [] if is_teacher else [term for term in OPTIONAL_TERMS if weights[term] > 0]
        values = [metrics.number(k) for k in (self.scorer.metric_name, "l_kde", "bal", *weighted)]
        if ft.diverged or any(v is None for v in values):
            out.diverged = True
            out.reward = self.cfg.reward.penalty
            out.reward_terms = {"penalty": self.cfg.reward.penalty}
        elif not is_teacher:  # the uniform candidate (baseline None) is its own baseline
            out.reward, out.reward_terms = compute_reward(metrics, baseline or metrics, self.cfg)
        if save_dir is not None and not out.diverged:
            save_candidate(Path(save_dir), net_g, pair.g_spec, net_d, pair.d_spec)
        out.times.total_s = time.perf_counter() - t0
        return _finite_record(out)


def save_candidate(folder: Path, net_g: nn.Module, g_spec: SubnetSpec, net_d: nn.Module, d_spec: SubnetSpec) -> None:
    """Write a pruned pair as specs (JSON) + state dicts (CPU tensors), each file atomically."""
    for role, net, spec in (("generator", net_g, g_spec), ("discriminator", net_d, d_spec)):
        atomic_write_text(folder / SPEC_FILES[role], spec.to_json(indent=1))
        atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / NETWORK_FILES[role])


def _finite_record(record: EvaluationRecord) -> EvaluationRecord:
    """``record`` with every NaN/inf number replaced by ``None`` (what the JSON log holds)."""
    return EvaluationRecord.from_dict(_finite_json(record.to_dict()))


def _finite_json(obj: Any) -> Any:
    """Replace NaN/inf floats by ``None`` so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def check_ratios(where: str, ratios: Sequence[float] | None, space: ChannelSpace) -> None:
    """User input check of a keep-ratio vector: one ratio per prunable group, each in (0, 1].

    :param where: what the vector is called (a CLI flag), for the message.
    :param ratios: the vector, or ``None`` (the uniform candidate's: nothing to check).
    :raises ConfigError: wrong length or a ratio outside (0, 1], in one line naming the group.
    """
    from collabprune.errors import ConfigError
    from collabprune.pruning.roles import full_name

    if ratios is None:
        return
    if len(ratios) != space.num_groups:
        raise ConfigError(f"{where}: {len(ratios)} keep ratios given, the {full_name(space.role)} network has "
                          f"{space.num_groups} prunable groups", hint="give one ratio per group, network order")
    for i, r in enumerate(ratios):
        if not (math.isfinite(r) and 0.0 < r <= 1.0):
            raise ConfigError(f"{where}: keep ratio {r:g} of group {i} ({space.groups[i].name}) is outside (0, 1]")


def evaluate_one(
    cfg: RunConfig, g_ratios: list[float] | None, d_ratios: list[float] | None, run_dir: Path | None = None
) -> dict[str, EvaluationRecord]:
    """Evaluate the teacher, the uniform candidate and one hand-chosen candidate (``evaluate`` CLI).

    :param g_ratios: generator keep ratios; ``None`` -> the uniform candidate's.
    :param d_ratios: discriminator keep ratios; ``None`` -> the uniform candidate's.
    :param run_dir: cache folder (default ``output.run_dir``).
    :returns: ``{"teacher": ..., "uniform": ..., "candidate": ...}`` evaluation records.
    """
    ev = CandidateEvaluator(cfg, run_dir or cfg.output.run_dir)
    for flag, ratios, space in (("--g-ratios", g_ratios, ev.g_space), ("--d-ratios", d_ratios, ev.d_space)):
        check_ratios(flag, ratios, space)
    teacher = ev.evaluate_teacher()
    ug, ud = ev.uniform_ratios()
    seed = cfg.search.seed
    uniform = ev.evaluate_uniform(seed)
    candidate = ev.evaluate(g_ratios or ug, d_ratios or ud, seed, baseline=uniform.metrics)
    return {"teacher": teacher, "uniform": uniform, "candidate": candidate}
