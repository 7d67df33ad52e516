"""Typed, validated run config (DESIGN.md §1).

A run config is one YAML file with the sections ``data``, ``teacher``, ``model``, ``pruning``,
``reward``, ``finetune``, ``search``, ``agents`` and ``output``. Every field has a default, so an empty
file is the demo config. ``--set key.sub=value`` overrides are applied before validation, and any
wrong field or value raises a :class:`~collabprune.errors.ConfigError` whose one-line message names
the field, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collabprune.errors import ConfigError
from collabprune.io import atomic_write_text


class _Section(BaseModel):
    """Base of every config section: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: The demo dataset's paired tasks (aligned ``A|B`` files, ``collabprune.data.demo``).
PAIRED_TASKS: tuple[str, ...] = ("restore", "colourise", "edges")
#: Its unpaired tasks (unaligned ``{split}A`` / ``{split}B`` folders).
UNPAIRED_TASKS: tuple[str, ...] = ("cartoon", "sketch")


def _one_of(names: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


class DemoDataConfig(_Section):
    """How ``collabprune data demo`` builds the demo dataset (``collabprune.data.demo``)."""

    task: Literal[PAIRED_TASKS + UNPAIRED_TASKS] = Field(  # type: ignore[valid-type]
        "restore", description="paired (aligned layout): blurred+noisy -> clean, grey -> colour, or edges -> photo; "
        "unpaired (unaligned layout): cartoon or sketch, photo crops -> independently drawn cartoonised or "
        "pencil-sketched crops. Left out, "
        "it is restore for aligned data and cartoon for unaligned data"
    )
    size: int = Field(128, ge=32, le=1024, description="side of the square A and B crops, pixels")
    crops_per_image: int = Field(24, ge=1, description="random crops taken from each source photo")
    seed: int = 0


class DataConfig(_Section):
    """Dataset location, layout and upstream preprocessing."""

    root: Path = Path("data/demo")
    dataset_mode: Literal["aligned", "unaligned"] = "aligned"
    direction: Literal["AtoB", "BtoA"] = "AtoB"
    preprocess: Literal["resize_and_crop", "crop", "none"] = "resize_and_crop"
    load_size: int = Field(286, ge=8)
    crop_size: int = Field(256, ge=8)
    no_flip: bool = False
    input_nc: int = Field(3, ge=1)
    output_nc: int = Field(3, ge=1)
    heldout_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="fraction of the train split held out for the reward"
    )
    demo: DemoDataConfig = DemoDataConfig()

    @model_validator(mode="before")
    @classmethod
    def _demo_task_follows_layout(cls, data: Any) -> Any:
        """An unaligned config that names no demo task gets the unpaired one (``cartoon``), so a config
        for one's own unaligned dataset need not name a demo task."""
        if not isinstance(data, dict) or data.get("dataset_mode") != "unaligned":
            return data
        demo = data.get("demo")
        if demo is None:
            return {**data, "demo": {"task": "cartoon"}}
        if isinstance(demo, dict) and "task" not in demo:
            return {**data, "demo": {**demo, "task": "cartoon"}}
        return data

    @model_validator(mode="after")
    def _demo_task_fits_layout(self) -> "DataConfig":
        """The demo task writes the layout ``dataset_mode`` reads: cartoon and sketch unaligned, the others
        aligned."""
        need = "unaligned" if self.demo.task in UNPAIRED_TASKS else "aligned"
        if self.dataset_mode != need:
            other = _one_of(UNPAIRED_TASKS if need == "aligned" else PAIRED_TASKS)
            raise ValueError(f"demo.task={self.demo.task} writes {need} data, but dataset_mode={self.dataset_mode}; "
                             f"allowed: dataset_mode={need}, or demo.task={other}")
        return self

    @model_validator(mode="after")
    def _crop_fits(self) -> "DataConfig":
        if self.preprocess == "resize_and_crop" and self.crop_size > self.load_size:
            raise ValueError(
                f"crop_size={self.crop_size} is larger than load_size={self.load_size}; "
                "allowed: crop_size <= load_size"
            )
        return self


class ModelConfig(_Section):
    """Generator and discriminator architecture (upstream ``--netG``, ``--netD`` names) and the family."""

    family: Literal["pix2pix", "cyclegan"] = Field(
        "pix2pix", description="pix2pix: paired data, conditional D on cat(A, B), L1 to the ground truth; "
        "cyclegan: unpaired data, the compressed G_A and the unconditional D_B (DESIGN.md §2)")
    net_g: Literal["unet_256", "unet_128", "resnet_9blocks", "resnet_6blocks"] = "unet_256"
    net_d: Literal["basic", "n_layers"] = "basic"
    n_layers_d: int = Field(3, ge=1, le=6)
    ngf: int = Field(64, ge=1)
    ndf: int = Field(64, ge=1)
    norm: Literal["batch", "instance", "none"] = "batch"
    use_dropout: bool = True


class TeacherConfig(_Section):
    """Teacher training (pix2pix recipe) or an existing teacher checkpoint folder."""

    checkpoint_dir: Path = Path("runs/demo_teacher")
    n_epochs: int = Field(100, ge=0, description="epochs at the initial learning rate")
    n_epochs_decay: int = Field(100, ge=0, description="epochs of linear decay to zero")
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    lambda_l1: float = Field(100.0, ge=0)
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    save_every_epochs: int = Field(1, ge=1)
    seed: int = 0
    lambda_cycle: float = Field(10.0, ge=0, description="CycleGAN: weight of each cycle-consistency L1 "
                                "(upstream lambda_A = lambda_B)")
    lambda_identity: float = Field(0.5, ge=0, description="CycleGAN: identity loss weight, relative to "
                                   "lambda_cycle (upstream lambda_identity)")
    pool_size: int = Field(50, ge=0, description="CycleGAN: image buffer of generated images shown to the "
                           "discriminators (upstream pool_size; 0: none)")
    d_warmup_steps: int = Field(
        300, ge=1, description="when the teacher folder holds a generator only (upstream releases), steps "
        "that train a discriminator against the frozen teacher G; the result is cached in the run")


#: Backends a latency budget can be measured on (``collabprune.backends.backend_latency_s``).
LATENCY_BACKENDS: tuple[str, ...] = ("torch-cpu", "onnxruntime-cpu", "torch-cuda")


class LatencyBudget(_Section):
    """A generator budget in measured latency on a named backend (``pruning.budget.generator:
    {latency_ms: 4.0, batch: 1, backend: torch-cpu}``). The search measures a latency model of the
    teacher's sub-networks on that backend (:mod:`collabprune.pruning.latency_model`) and projects
    every proposal onto ``latency_ms`` as predicted by it."""

    latency_ms: float = Field(gt=0.0, description="latency target of one forward pass, milliseconds")
    batch: int = Field(1, ge=1, description="batch size the latency is for")
    backend: Literal[LATENCY_BACKENDS] = "torch-cpu"  # type: ignore[valid-type]


class BudgetConfig(_Section):
    """Budgets (DESIGN.md §3): fractions of the teacher's physical MACs, or for the generator a
    :class:`LatencyBudget`."""

    generator: Annotated[float, Field(gt=0.0, le=1.0)] | LatencyBudget = 0.25
    discriminator: float = Field(0.5, gt=0.0, le=1.0)

    def generator_text(self) -> str:
        """The generator budget in words: ``25% of the teacher's G MACs`` or ``4 ms on torch-cpu at batch 1``."""
        g = self.generator
        if isinstance(g, LatencyBudget):
            return f"{g.latency_ms:g} ms on {g.backend} at batch {g.batch}"
        return f"{g:.0%} of the teacher's G MACs"


class PruningConfig(_Section):
    """Channel space: keep-ratio range, rounding and importance criterion."""

    budget: BudgetConfig = BudgetConfig()
    r_min: float = Field(0.05, gt=0.0, le=1.0, description="smallest keep ratio an agent may ask for")
    r_max: float = Field(1.0, gt=0.0, le=1.0, description="largest keep ratio an agent may ask for")
    round_to: int = Field(8, ge=1, description="kept channels are a multiple of this")
    min_channels: int = Field(8, ge=1, description="never keep fewer channels in a group")
    importance: Literal["l1", "l2", "random"] = "l1"
    latency_model: Path | None = Field(None, description="the measured latency model of a latency budget "
                                       "(JSON); the search measures it into RUN_DIR/latency_model.json and sets this")
    latency_samples: int = Field(24, ge=4, description="sub-networks timed to fit a latency model")

    @model_validator(mode="after")
    def _range(self) -> "PruningConfig":
        if self.r_min > self.r_max:
            raise ValueError(f"r_min={self.r_min} > r_max={self.r_max}; allowed: r_min <= r_max")
        return self


#: The two Frechet distances a run can score with (``reward.fid.mode``): pytorch-fid's FID, or the offline
#: fallback in the teacher D's feature space. Each labels its numbers in records and metrics by this name.
FdMetric = Literal["fid", "fd_teacher_d"]
FD_METRICS: tuple[str, ...] = get_args(FdMetric)


class FidConfig(_Section):
    """FID (pytorch-fid Inception pool3) and its offline fallback (DESIGN.md §4)."""

    mode: FdMetric = "fid"
    weights: Path | None = None
    download_timeout_s: float = Field(20.0, gt=0)
    dims: Literal[64, 192, 768, 2048] = 2048
    max_images: int = Field(200, ge=2, description="images of the held-out split used for FID")
    batch_size: int = Field(16, ge=1)


class KdeConfig(_Section):
    """Local-density-preservation objective (DESIGN.md §4)."""

    centres: int = Field(8, ge=1, description="B: inputs whose neighbourhoods are compared")
    neighbours: int = Field(8, ge=2, description="K: perturbations per centre")
    noise_std: float = Field(0.05, ge=0, description="std of the Gaussian input noise, [-1,1] units")
    jitter: int = Field(2, ge=0, description="max random shift of the input, pixels")
    features: Literal["teacher_d", "pixels", "inception"] = "teacher_d"


class RewardConfig(_Section):
    """Reward of DESIGN.md §4: weights, the bound of each term, the uniform baseline and the penalty."""

    w_fid: float = Field(1.0, ge=0)
    w_kde: float = Field(1.0, ge=0)
    w_bal: float = Field(0.5, ge=0)
    w_l1: float = Field(0.0, ge=0, description="weight of a ground-truth term t_l1 = clip(L1_s / L1_u, 0, c_max), "
                        "the L1 of G's outputs to the targets of the reward split (paired data only; 0, the "
                        "default, is DESIGN.md §4's reward)")
    w_pull: float = Field(0.0, ge=0, description="weight of t_pull = clip(pull_s / pull_u, 0, c_max), the "
                          "adversarial pull of the pruned D on G's outputs of the reward split: the adversarial "
                          "gradient's norm over the L1 gradient's (collabprune.objectives.pull; paired data with "
                          "finetune.lambda_l1 > 0 only; 0, the default, is DESIGN.md §4's reward)")
    w_pull_d: float | None = Field(None, ge=0, description="weight of t_pull in the discriminator agent's reward "
                                   "only: the D agent learns from w_team_d * reward - w_pull_d * t_pull, the G agent, "
                                   "best.json and the non-RL searches from the team reward "
                                   "(collabprune.evaluation.discriminator_reward; paired data with finetune.lambda_l1 "
                                   "> 0 only). Unset: 1 for paired data with finetune.lambda_l1 > 0 (the D agent "
                                   "learns from its own pull; README, 'Quality at equal MACs'), else 0 (DESIGN.md "
                                   "§4's team reward); 0 when only w_team_d > 0 is set")
    w_team_d: float | None = Field(None, ge=0, le=1, description="weight of the team reward in the discriminator "
                                   "agent's reward: w_team_d * reward - w_pull_d * t_pull. Unset: 0 when w_pull_d "
                                   "is (or resolves to) above 0, else 1 (DESIGN.md §4's team reward)")
    c_max: float = Field(3.0, gt=0, description="each term is clip(x_s / x_u, 0, c_max)")
    penalty: float = Field(-10.0, description="reward of a candidate whose fine-tuning diverges; must be "
                           "below the lowest reward of a valid candidate, -max(W, w_team_d * W + w_pull_d) * "
                           "c_max with W = w_fid + w_kde + w_bal + w_l1 + w_pull")
    uniform_seeds: int = Field(2, ge=1, description="seeds the uniform baseline is averaged over")
    balance_window: float = Field(0.5, gt=0, le=1, description="fraction of the fine-tuning steps at the end "
                                  "whose losses give rho (DESIGN.md §4, Balance)")
    fid: FidConfig = FidConfig()
    kde: KdeConfig = KdeConfig()

    def weights(self) -> dict[str, float]:
        """The weight of each reward term by its name in ``reward_terms``: ``fid``, ``kde``, ``bal`` (DESIGN.md
        §4) and the optional ``l1`` and ``pull``."""
        return {"fid": self.w_fid, "kde": self.w_kde, "bal": self.w_bal, "l1": self.w_l1, "pull": self.w_pull}

    def d_weights_resolved(self) -> bool:
        """Whether ``w_team_d`` and ``w_pull_d`` both hold a number (a loaded :class:`RunConfig` resolves them)."""
        return self.w_team_d is not None and self.w_pull_d is not None

    @model_validator(mode="after")
    def _bounded(self) -> "RewardConfig":
        if self.w_team_d == 0 and self.w_pull_d == 0:
            raise ValueError("w_team_d=0 and w_pull_d=0 leave the discriminator agent no reward; allowed: "
                             "w_team_d > 0 or w_pull_d > 0")
        team = sum(self.weights().values())
        floor = -team * self.c_max
        if self.d_weights_resolved():  # the D agent's floor, once RunConfig has resolved its weights
            floor = -max(team, self.w_team_d * team + self.w_pull_d) * self.c_max
        if self.penalty >= floor:
            raise ValueError(f"penalty={self.penalty:g} is not below the lowest valid reward {floor:g}; allowed: "
                             f"penalty < -max(W, w_team_d * W + w_pull_d) * c_max, W = w_fid + w_kde + w_bal + w_l1 + "
                             "w_pull")
        return self


class FinetuneConfig(_Section):
    """Short fine-tuning of each candidate pair (and final fine-tuning of finalists)."""

    steps: int = Field(100, ge=1)
    final_steps: int = Field(1000, ge=1)
    final_seeds: int = Field(2, ge=1, description="seeds of the final fine-tuning behind held-out numbers")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(2e-4, gt=0)
    search_lr: float | None = Field(
        None, gt=0, description="learning rate of the in-search fine-tuning of ``steps`` steps (None: ``lr``); the "
        "final fine-tuning of finalists always uses ``lr``")
    lr_decay: bool = Field(True, description="decay the learning rate linearly to 0 over the fine-tuning steps")
    beta1: float = Field(0.5, ge=0, lt=1)
    lambda_l1: float = Field(100.0, ge=0, description="L1 to ground truth (pix2pix)")
    lambda_distill: float = Field(10.0, ge=0, description="L1 to the teacher's output")
    w_kde: float = Field(1.0, ge=0, description="weight of L_kde as a fine-tuning loss")
    kde_every: int = Field(4, ge=1, description="add the L_kde loss every N steps")
    bn_recalibration_batches: int = Field(
        8, ge=0, description="training batches that re-estimate BatchNorm statistics after pruning (adaptive BN; 0: off)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class SearchConfig(_Section):
    """The collaborative search loop (DESIGN.md §5)."""

    rounds: int = Field(30, ge=1)
    seed: int = 0
    common_seed: bool = Field(
        True,
        description="evaluate every candidate with the same seed (common random numbers: same fine-tuning "
        "batches, perturbations and dropout draws), so rewards differ by the candidate, not by the draw",
    )
    num_evaluators: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="evaluators in the pool = candidate pairs per round: auto = one per GPU of the "
        "cluster, or one per CPU without GPUs; a number caps it at what the cluster fits")
    agents: Literal["both", "generator"] = Field(
        "both", description="which agents search: both (collaborative), or the generator alone with the "
        "discriminator at its uniform candidate (same D budget)")
    action_log2_range: float = Field(
        1.5, gt=0, description="an action of +-1 multiplies the uniform keep ratio by 2**(+-k) (DESIGN.md §5)"
    )
    d_action_log2_range: float | None = Field(
        None, gt=0, description="the discriminator's k (None: action_log2_range). The in-search reward barely "
        "sees D's allocation, yet far from uniform it changes the finalists' held-out quality (README, 'Quality')")
    tie_levels: bool = Field(False, description="the generator agent decides one keep ratio per mirrored level "
                             "(an encoder group and the decoder group of the same feature-map size)")
    budgets: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        None, min_length=1, description="generator MACs budgets of one multi-budget search (fractions of the teacher's "
        "G MACs): slot s of every round searches budget s mod K with one policy per role that observes the "
        "budget; pruning.budget.generator must be one of them (the run's primary budget)")
    reeval_top_k: int = Field(3, ge=0, description="best candidates re-evaluated with fresh seeds before one is "
                              "called best (uniform is always re-evaluated with them)")
    reeval_seeds: int = Field(2, ge=1, description="fresh seeds of the top-k re-evaluation")
    checkpoint_every: int = Field(5, ge=1)
    round_timeout_s: float = Field(3600.0, gt=0, description="longest wait for one evaluation")
    startup_timeout_s: float = Field(600.0, gt=0, description="longest wait for the evaluators to start "
                                     "(process start, imports, model tracing; slow on a busy machine)")
    evaluator_max_restarts: int = Field(2, ge=0)
    agent_max_restarts: int = Field(
        2, ge=0, description="restarts of a dead agent actor; it resumes from its latest checkpoint and "
        "replays the logged rounds after it")

    def log2_range(self, role: str) -> float:
        """``k`` of a role's action map (DESIGN.md §5): ``d_action_log2_range`` for the discriminator
        when set, else ``action_log2_range``.

        :param role: ``"generator"``/``"g"`` or ``"discriminator"``/``"d"``.
        :raises ValueError: another role name.
        """
        if role not in ("generator", "g", "discriminator", "d"):
            raise ValueError(f"search.log2_range: unknown role {role!r} (generator, g, discriminator or d)")
        if role in ("discriminator", "d") and self.d_action_log2_range is not None:
            return self.d_action_log2_range
        return self.action_log2_range


class AgentsConfig(_Section):
    """Stable-Baselines3 agents: algorithm, exploration and hyperparameters (DESIGN.md §5)."""

    algo: Literal["td3", "ddpg", "sac", "ppo"] = "ddpg"
    warmup_episodes: int = Field(8, ge=0, description="rounds whose actions are drawn near the uniform candidate")
    warmup_sigma: float = Field(0.4, ge=0, description="std of the warm-up actions around the zero (uniform) action")
    noise_sigma: float = Field(0.4, ge=0, description="TD3/DDPG exploration noise std after warm-up")
    noise_decay: float = Field(0.99, gt=0, le=1, description="exploration noise factor per learning round")
    mean_action_penalty: float = Field(10.0, ge=0, description="TD3/DDPG: weight of mean(mu(s))^2 in the actor "
                                       "loss (keeps the actor centred on the uniform candidate)")
    self_imitation: float = Field(10.0, ge=0, description="TD3/DDPG: weight of self-imitation, the pull of the "
                                  "actor towards actions of episodes that beat the critic's estimate (0: off)")
    sac_target_entropy: float = Field(-3.0, description="SAC's entropy target (small: little exploration)")
    learning_rate: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    buffer_size: int = Field(20000, ge=1)
    gradient_steps: int = Field(-1, description="SB3 gradient steps per round (-1: as many as env steps)")
    learn_during_evaluation: bool | Literal["auto"] = Field(
        "auto", description="TD3/DDPG/SAC: take a round's gradient steps while the next round is evaluated "
        "(its proposals come from a policy one round behind; the agents' learning leaves the round's critical "
        "path). auto: from 4 candidates evaluated at once (agents.learners.learns_during_evaluation). Ignored by PPO")
    steps_before_proposal: int = Field(
        0, ge=0, description="when learning during evaluation: this many of a round's gradient steps are taken "
        "before the next round's proposals (so they learn from it), the rest while it is evaluated")
    rollout_episodes: int = Field(4, ge=1, description="PPO: rounds per rollout")
    net_arch: list[int] = [64, 64]
    exchange: bool = Field(True, description="share observations with the peer agent (D sees G's proposal)")
    extra: dict[str, Any] = Field(default_factory=dict, description="other SB3 keyword arguments")


class OutputConfig(_Section):
    """Where a run writes its run directory."""

    run_dir: Path = Path("runs/demo")


class RunConfig(_Section):
    """One collabprune run: every section of the config file."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    model: ModelConfig = ModelConfig()
    pruning: PruningConfig = PruningConfig()
    reward: RewardConfig = RewardConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    search: SearchConfig = SearchConfig()
    agents: AgentsConfig = AgentsConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _family_reads_its_layout(self) -> "RunConfig":
        from collabprune.models.family import FAMILIES

        mode = FAMILIES[self.model.family].dataset_mode
        if self.data.dataset_mode != mode:
            raise ValueError(f"model.family={self.model.family} reads {mode} data, but data.dataset_mode="
                             f"{self.data.dataset_mode}; allowed: data.dataset_mode={mode} (or the other family)")
        return self

    @model_validator(mode="after")
    def _d_agent_reward(self) -> "RunConfig":
        """Resolve an unset ``reward.w_team_d`` / ``reward.w_pull_d``: with paired data and
        ``finetune.lambda_l1 > 0`` the D agent learns from its own adversarial pull (0 and 1), otherwise
        from the team reward (1 and 0). This differs from DESIGN.md §4's "both agents receive the same
        (team) reward" for paired data: over 15 search seeds at 25% and 10% of G MACs the pull-only D
        reward beats random search with the interval above 0, the team reward at 25% does not (README,
        "Quality at equal MACs"; docs/proposal_d_agent_reward.md)."""
        from collabprune.models.family import FAMILIES

        reward = self.reward
        pulls = FAMILIES[self.model.family].paired and self.finetune.lambda_l1 > 0
        if reward.w_team_d == 0 and reward.w_pull_d is None and not pulls:
            raise ValueError(f"reward.w_team_d=0 leaves the discriminator agent only its pull, which needs paired "
                             f"data and finetune.lambda_l1 > 0 (model.family={self.model.family}, "
                             f"finetune.lambda_l1={self.finetune.lambda_l1:g}); allowed: reward.w_team_d > 0")
        if reward.w_team_d is None and reward.w_pull_d is None:
            reward.w_pull_d = 1.0 if pulls else 0.0
        if reward.w_team_d is None:
            reward.w_team_d = 0.0 if reward.w_pull_d > 0 else 1.0
        if reward.w_pull_d is None:
            reward.w_pull_d = 0.0 if reward.w_team_d > 0 else 1.0
        return self

    @model_validator(mode="after")
    def _l1_needs_pairs(self) -> "RunConfig":
        from collabprune.models.family import FAMILIES

        for term in ("w_l1", "w_pull", "w_pull_d"):
            weight = getattr(self.reward, term)
            if weight > 0 and not FAMILIES[self.model.family].paired:
                raise ValueError(f"reward.{term}={weight:g} needs paired data (a ground truth per input), but "
                                 f"model.family={self.model.family} is unpaired; allowed: reward.{term}=0")
        for term in ("w_pull", "w_pull_d"):
            weight = getattr(self.reward, term)
            if weight > 0 and self.finetune.lambda_l1 == 0:
                raise ValueError(f"reward.{term}={weight:g} compares D's pull with the L1 term's, but "
                                 f"finetune.lambda_l1=0; allowed: reward.{term}=0 or finetune.lambda_l1 > 0")
        return self

    @model_validator(mode="after")
    def _budgets_include_the_primary(self) -> "RunConfig":
        budgets = self.search.budgets
        if budgets is None:
            return self
        g = self.pruning.budget.generator
        if isinstance(g, LatencyBudget):
            raise ValueError(f"search.budgets={budgets} needs a MACs generator budget, but pruning.budget.generator "
                             "is a latency budget; allowed: pruning.budget.generator=<fraction>")
        if len(set(budgets)) != len(budgets):
            raise ValueError(f"search.budgets={budgets} repeats a budget; allowed: distinct fractions")
        if g not in budgets:
            raise ValueError(f"pruning.budget.generator={g:g} is not one of search.budgets={budgets}; allowed: "
                             "one of them (the run's primary budget: best.json, the summary, a plain export)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-compatible data (paths as strings)."""
        return json.loads(self.model_dump_json())

    def digest(self) -> str:
        """SHA-256 (hex, 16 chars) of the canonical JSON of this config."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML (so ``3``, ``0.5``, ``true``, ``[64,64]`` get their types)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping (in place, and returned).

    :param data: the raw mapping loaded from YAML.
    :param overrides: strings of the form ``section.field=value``; values are parsed as YAML.
    :raises ConfigError: when an override has no ``=`` or walks into a non-mapping.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return data


def _format_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad field, its value and what is allowed."""
    def field(e: Any) -> str:  # a union field's errors end in a branch tag ("constrained-int", "literal['auto']",
        # "bool", a section's class name): no field is named like one
        return ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and (
            "-" in p or "[" in p or p[:1].isupper() or p in ("bool", "int", "float", "str"))))

    errors = err.errors()
    first = errors[0]
    if isinstance(first.get("input"), dict):  # a section given for a union: the section branch's error says more
        first = next((e for e in errors if any(isinstance(p, str) and p[:1].isupper() for p in e["loc"])), first)
    loc = field(first) or "<root>"
    msg = ", or ".join(e["msg"] for e in errors if field(e) == field(first))  # every branch of a union
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown field '{loc}'"
    if first["type"] == "missing":
        return f"{source}: field '{loc}' is required"
    value = first.get("input")
    if first["type"] == "value_error":  # a validator across fields: its message names them and the rule
        where = "" if loc == "<root>" else f"section '{loc}': "
        return f"{source}: {where}{first['msg'].removeprefix('Value error, ')}"
    if isinstance(value, dict):
        value = "{...}"
    expected = first.get("ctx", {}).get("expected")
    allowed = f"; allowed: {expected}" if expected else ""
    return f"{source}: field '{loc}' has bad value {value!r}: {msg}{allowed}"


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`.

    :param data: raw mapping (from YAML, after overrides).
    :param source: where it came from, for the error message (e.g. the file path).
    :raises ConfigError: one line naming the field, the bad value and what is allowed.
    """
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config, apply overrides and validate it.

    :param path: the YAML file; ``None`` gives the defaults (the demo config).
    :param overrides: ``key.sub=value`` strings applied before validation.
    :raises ConfigError: missing/unparsable file, a non-mapping document, or an invalid field.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    apply_overrides(data, list(overrides or []))
    return validate_config(data, source)


def save_config(cfg: RunConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
