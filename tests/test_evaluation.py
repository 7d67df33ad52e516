"""Candidate evaluation: teacher and uniform baselines, the reward, idempotence, caches, divergence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from collabprune.config import RunConfig, load_config
from collabprune.evaluation import CandidateEvaluator, compute_reward, discriminator_reward
from collabprune.models import build_from_spec, load_state_dict_strict, read_state_dict
from collabprune.models.subnet import NETWORK_FILES, SPEC_FILES
from collabprune.pruning.prune import prune_model
from collabprune.models.spec import SubnetSpec
from collabprune.records import EvalTimes, EvaluationRecord
from tiny import tiny_config


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    return tiny_config(tmp_path_factory.mktemp("tiny_eval"))


@pytest.fixture(scope="module")
def evaluator(cfg: RunConfig, tmp_path_factory: pytest.TempPathFactory) -> CandidateEvaluator:
    return CandidateEvaluator(cfg, tmp_path_factory.mktemp("eval_run"))


def _without_times(result: EvaluationRecord) -> EvaluationRecord:
    return dataclasses.replace(result, times=EvalTimes())


def test_teacher_is_its_own_reference(evaluator: CandidateEvaluator) -> None:
    teacher = evaluator.evaluate_teacher()
    m = teacher.metrics
    assert m.l_kde == 0.0 and m.bal == 0.0 and m.rho > 0
    assert m.g_macs_fraction == 1.0 and m.fd_metric == "fd_teacher_d" and "fid" not in m
    assert teacher.reward is None
    assert evaluator.evaluate_teacher() == teacher  # cached in the run directory
    assert (evaluator.run_dir / "teacher_eval.json").is_file()


def test_uniform_meets_budget_and_is_its_own_baseline(evaluator: CandidateEvaluator, cfg: RunConfig) -> None:
    g, d = evaluator.uniform_ratios()
    b = cfg.pruning.budget
    assert g == evaluator.g_space.project([evaluator.g_space.uniform_ratio(b.generator)] * len(g), b.generator)
    uniform = evaluator.evaluate_uniform(seed=0)
    m = uniform.metrics
    assert m.g_macs_fraction <= b.generator and m.d_macs_fraction <= b.discriminator
    assert m.g_macs_fraction >= 0.9 * b.generator  # the tiny net's coarse groups: close, not 98%
    assert uniform.reward == pytest.approx(-(cfg.reward.w_fid + cfg.reward.w_kde + cfg.reward.w_bal), rel=1e-9) \
        or m.bal < 0.05  # the bal floor keeps a near-perfectly balanced uniform from dividing by ~0
    assert 0 < m.l_kde <= 2 and m.fd_teacher_d > 0
    # the baseline is averaged over reward.uniform_seeds seeds
    seeds = uniform.seed_results
    assert seeds is not None and [s.seed for s in seeds] == [0, 1] == evaluator.uniform_seeds(0)
    for key in ("fd_teacher_d", "l_kde", "rho"):
        assert m[key] == pytest.approx(sum(s.metrics[key] for s in seeds) / 2)


def test_adaptive_bn_recalibrates_the_pruned_statistics() -> None:
    """After pruning, BatchNorm statistics are re-estimated on training batches: they differ from the
    teacher's inherited ones, equal the batches' moments, and the weights are untouched."""
    import copy

    from collabprune.finetune import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    net[1].running_mean.fill_(5.0)  # statistics inherited from somewhere else
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(8, 3, 16, 16)
    assert recalibrate_batchnorm([net], [(x[:4],), (x[4:],)], lambda b: net(b)) == 1
    with torch.no_grad():
        feats = net[0](x)
    assert torch.allclose(net[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch = [feats[:4].var(dim=(0, 2, 3)), feats[4:].var(dim=(0, 2, 3))]  # unbiased, averaged over batches
    assert torch.allclose(net[1].running_var, (per_batch[0] + per_batch[1]) / 2, rtol=1e-4)
    assert net[1].momentum == 0.1 and not net.training  # momentum and mode restored
    assert torch.equal(net[1].weight, before["1.weight"]) and torch.equal(net[0].weight, before["0.weight"])



def test_idempotent_for_config_ratios_seed(evaluator: CandidateEvaluator) -> None:
    g = [0.5] * evaluator.g_space.num_groups
    d = [0.75] * evaluator.d_space.num_groups
    base = evaluator.evaluate(*evaluator.uniform_ratios(), seed=0, baseline=None).metrics
    first = evaluator.evaluate(g, d, seed=3, baseline=base)
    second = evaluator.evaluate(g, d, seed=3, baseline=base)
    assert _without_times(first) == _without_times(second)
    assert isinstance(first.reward, float) and set(first.reward_terms) == {"fid", "kde", "bal"}


def test_real_statistics_are_computed_once(evaluator: CandidateEvaluator, cfg: RunConfig) -> None:
    g, d = evaluator.uniform_ratios()
    evaluator.evaluate(g, d, seed=1, baseline=None)
    assert evaluator.scorer.cache_hits >= 1
    again = CandidateEvaluator(cfg, evaluator.run_dir)  # a new process would read the disk cache
    again.evaluate(g, d, seed=1, baseline=None)
    assert again.scorer.cache_misses == 0 and again.scorer.cache_hits >= 1


def test_diverging_candidate_gets_the_penalty(cfg: RunConfig, tmp_path: Path) -> None:
    bad = cfg.model_copy(deep=True)
    bad.finetune.lr = 1e30
    ev = CandidateEvaluator(bad, tmp_path)
    out = ev.evaluate(*ev.uniform_ratios(), seed=0, baseline=None)
    assert out.diverged is True and out.reward == bad.reward.penalty


def test_saved_candidate_rebuilds_exactly(evaluator: CandidateEvaluator, tmp_path: Path) -> None:
    g, d = evaluator.uniform_ratios()
    evaluator.evaluate(g, d, seed=0, baseline=None, save_dir=tmp_path)
    spec = SubnetSpec.from_json((tmp_path / SPEC_FILES["generator"]).read_text())
    net = build_from_spec(spec)
    load_state_dict_strict(net, read_state_dict(tmp_path / NETWORK_FILES["generator"]), "saved")
    # the saved generator is the pruned teacher after fine-tuning: same architecture as a fresh prune
    fresh, fresh_spec = prune_model(evaluator.teacher_g, torch.zeros(evaluator.g_shape), g, evaluator.cfg.pruning)
    assert fresh_spec.kept == spec.kept
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_compute_reward_orders_candidates(cfg: RunConfig) -> None:
    base = {"fd_metric": "fid", "fid": 10.0, "l_kde": 0.5, "bal": 0.2}
    same, _ = compute_reward(base, base, cfg)
    better, terms = compute_reward({**base, "fid": 5.0, "l_kde": 0.25}, base, cfg)
    assert same == pytest.approx(-(cfg.reward.w_fid + cfg.reward.w_kde + cfg.reward.w_bal))
    assert better > same and terms["fid"] == pytest.approx(0.5 * cfg.reward.w_fid)


def test_ground_truth_term_is_off_by_default_and_weighted_when_on(evaluator: CandidateEvaluator, cfg: RunConfig) -> None:
    """Paired data: every evaluation measures the reward split's L1 to the targets; it enters the
    reward (``t_l1 = clip(L1_s / L1_u, 0, c_max)``) only with ``reward.w_l1 > 0``; unpaired data refuses it."""
    from collabprune.errors import ConfigError

    g, d = evaluator.uniform_ratios()
    record = evaluator.evaluate(g, d, seed=0, baseline=None)
    assert 0 < record.metrics["l1"] <= 2 and "l1" not in record.reward_terms
    base = {"fd_metric": "fid", "fid": 10.0, "l_kde": 0.5, "bal": 0.2, "l1": 0.2}
    on = RunConfig.model_validate({**cfg.to_dict(), "reward": {**cfg.reward.model_dump(), "w_l1": 2.0, "penalty": -20.0}})
    reward, terms = compute_reward({**base, "l1": 0.1}, base, on)
    assert terms["l1"] == pytest.approx(2.0 * 0.5)
    assert reward == pytest.approx(compute_reward(base, base, cfg)[0] - 1.0)
    with pytest.raises(ConfigError, match="reward.w_l1=1 needs paired data"):
        load_config("configs/cyclegan_demo.yaml", ["reward.w_l1=1"])


def test_reward_is_bounded_above_the_penalty(cfg: RunConfig) -> None:
    """Each term is clip(x_s / x_u, 0, c_max): the worst valid candidate scores
    -(w_fid + w_kde + w_bal) * c_max, above the penalty of a diverged one (DESIGN.md §4)."""
    from collabprune.errors import ConfigError

    rc = cfg.reward
    base = {"fd_metric": "fid", "fid": 10.0, "l_kde": 0.5, "bal": 0.2}
    awful, terms = compute_reward({**base, "fid": 1e9, "l_kde": 2.0, "bal": 50.0}, base, cfg)
    floor = -(rc.w_fid + rc.w_kde + rc.w_bal) * rc.c_max
    assert awful == pytest.approx(floor) and awful > rc.penalty
    assert terms["fid"] == pytest.approx(rc.w_fid * rc.c_max)
    perfect, _ = compute_reward({**base, "fid": 0.0, "l_kde": 0.0, "bal": 0.0}, base, cfg)
    assert perfect == 0.0
    with pytest.raises(ConfigError, match="penalty"):
        load_config(None, ["reward.penalty=-5", "reward.c_max=3"])


@pytest.mark.parametrize("flag, text, fragment", [
    ("--g-ratios", "1.5", "outside (0, 1]"),
    ("--g-ratios", "0.5,0.5", "prunable groups"),
    ("--d-ratios", "0.5,-1,0.5", "discriminator network has"),
    ("--g-ratios", "0.5,abc", "comma-separated numbers"),
])
def test_evaluate_cli_bad_ratios_one_line_exit_2(cfg: RunConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 flag: str, text: str, fragment: str) -> None:
    """A keep ratio outside (0, 1] or a vector of the wrong length: one line on stderr, exit 2, nothing run."""
    import yaml

    from collabprune.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run_dir = tmp_path / "run"
    if flag == "--g-ratios" and "," not in text:  # right length, one ratio out of range
        from envs.space import RoleSpace

        text = ",".join([text] + ["0.5"] * (RoleSpace.from_config("generator", cfg).n_groups - 1))
    code = main(["evaluate", str(config), flag, text, "--set", f"output.run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and fragment in err and flag in err and "Traceback" not in err
    assert not run_dir.exists() or not any(run_dir.rglob("*.json"))  # nothing was evaluated


def test_evaluator_and_agents_agree_on_the_channel_spaces(evaluator: CandidateEvaluator, cfg: RunConfig) -> None:
    """The evaluator traces the loaded teacher, the agents' envs and the Coordinator a config-built
    network: the same spaces, the same digests; the search refuses an evaluator whose space differs."""
    from agents.driver import _check_spaces
    from collabprune.errors import SpaceMismatchError
    from envs.space import RoleSpace

    spaces = [RoleSpace.from_config(r, cfg) for r in ("generator", "discriminator")]
    digests = evaluator.space_digests()
    assert digests == {s.name: s.channels.digest for s in spaces}
    _check_spaces(spaces, [digests, dict(digests)])
    other = RoleSpace.from_config("generator", cfg.model_copy(update={"pruning": cfg.pruning.model_copy(
        update={"round_to": cfg.pruning.round_to * 2})}))
    assert other.channels.digest != digests["generator"]
    with pytest.raises(SpaceMismatchError, match="evaluator 1: its generator channel space"):
        _check_spaces(spaces, [digests, dict(digests, generator=other.channels.digest)])


def test_search_lr_sets_the_in_search_fine_tuning_only(evaluator: CandidateEvaluator, cfg: RunConfig,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``finetune.search_lr`` is Adam's learning rate of every in-search fine-tuning; ``train_pair``
    without a rate (as ``HeldoutEvaluator.evaluate`` calls it for the final fine-tuning) keeps
    ``finetune.lr``."""
    import collabprune.finetune as finetune

    seen: list[float] = []
    real = finetune.adam_pair

    def recording(g: torch.nn.Module, d: torch.nn.Module, lr: float, beta1: float) -> tuple:
        seen.append(lr)
        return real(g, d, lr, beta1)

    monkeypatch.setattr(finetune, "adam_pair", recording)
    fast = RunConfig.model_validate({**cfg.to_dict(), "finetune": {**cfg.finetune.model_dump(), "search_lr": 1e-3}})
    assert cfg.finetune.search_lr is None and fast.finetune.lr != 1e-3
    monkeypatch.setattr(evaluator, "cfg", fast)
    g, d = evaluator.uniform_ratios()
    evaluator.evaluate(g, d, seed=3, baseline=None)
    assert seen and set(seen) == {1e-3}
    seen.clear()
    evaluator.train_pair(g, d, seed=3, steps=1)
    assert seen == [fast.finetune.lr]


def test_adversarial_pull_is_measured_and_weighted_only_when_on(evaluator: CandidateEvaluator, cfg: RunConfig,
                                                                 tmp_path: Path) -> None:
    """Paired data: every evaluation of a pruned pair measures D's adversarial pull on the reward split; it
    enters the reward (``t_pull = clip(pull_s / pull_u, 0, c_max)``) only with ``reward.w_pull > 0``, and
    the teacher (scored without D, no reward) is not taken for diverged. Unpaired data and a fine-tuning
    without an L1 term refuse the weight, and the penalty must stay below the floor."""
    from collabprune.errors import ConfigError

    g, d = evaluator.uniform_ratios()
    record = evaluator.evaluate(g, d, seed=0, baseline=None)
    assert record.metrics["pull"] > 0 and "pull" not in record.reward_terms
    base = {"fd_metric": "fid", "fid": 10.0, "l_kde": 0.5, "bal": 0.2, "pull": 0.4}
    on = RunConfig.model_validate({**cfg.to_dict(), "reward": {**cfg.reward.model_dump(), "w_pull": 0.5}})
    reward, terms = compute_reward({**base, "pull": 0.2}, base, on)
    assert terms["pull"] == pytest.approx(0.5 * 0.5)
    assert reward == pytest.approx(compute_reward(base, base, cfg)[0] - 0.25)
    assert compute_reward({**base, "pull": 1e9}, base, on)[1]["pull"] == pytest.approx(0.5 * on.reward.c_max)
    weighted = CandidateEvaluator(on, tmp_path)
    teacher = weighted.evaluate_teacher()
    assert not teacher.diverged and teacher.reward is None and teacher.metrics.rho is not None
    record = weighted.evaluate(g, d, seed=0, baseline=None)
    assert record.reward_terms["pull"] == pytest.approx(0.5)  # the uniform candidate is its own baseline
    assert record.reward == pytest.approx(-sum(record.reward_terms.values()))
    with pytest.raises(ConfigError, match="reward.w_pull=1 needs paired data"):
        load_config("configs/cyclegan_demo.yaml", ["reward.w_pull=1"])
    with pytest.raises(ConfigError, match="finetune.lambda_l1=0"):
        load_config("configs/demo.yaml", ["reward.w_pull=1", "finetune.lambda_l1=0"])
    with pytest.raises(ConfigError, match="not below the lowest valid reward"):
        load_config("configs/demo.yaml", ["reward.w_pull=3"])  # floor -(0.05 + 1 + 3) * 3 is below -10
    with pytest.raises(ConfigError, match="not below the lowest valid reward"):
        load_config("configs/demo.yaml", ["reward.w_pull_d=3", "reward.w_team_d=1"])  # D's floor -(1.05 + 3) * 3
    with pytest.raises(ConfigError, match="reward.w_pull_d=1 needs paired data"):
        load_config("configs/cyclegan_demo.yaml", ["reward.w_pull_d=1"])
    with pytest.raises(ConfigError, match="reward.w_pull_d=1 compares"):
        load_config("configs/demo.yaml", ["reward.w_pull_d=1", "finetune.lambda_l1=0"])
    # the D agent's reward: w_team_d * team reward - w_pull_d * t_pull; a missing pull counts as c_max
    team = {**cfg.reward.model_dump(), "w_team_d": 1.0, "w_pull_d": 0.0}
    team_cfg = RunConfig.model_validate({**cfg.to_dict(), "reward": team})
    d_on = RunConfig.model_validate({**cfg.to_dict(), "reward": {**team, "w_pull_d": 0.5}})
    assert discriminator_reward(-1.0, {**base, "pull": 0.2}, base, d_on) == pytest.approx(-1.25)
    assert discriminator_reward(-1.0, {**base, "pull": 0.2}, base, team_cfg) == -1.0
    pull_only = RunConfig.model_validate({**cfg.to_dict(), "reward": {**team, "w_pull_d": 1.0, "w_team_d": 0.0}})
    assert discriminator_reward(-1.0, {**base, "pull": 0.2}, base, pull_only) == pytest.approx(-0.5)
    with pytest.raises(ConfigError, match="no reward"):
        load_config("configs/demo.yaml", ["reward.w_team_d=0", "reward.w_pull_d=0"])
    missing = {k: v for k, v in base.items() if k != "pull"}
    assert discriminator_reward(-1.0, missing, missing, d_on) == pytest.approx(-1.0 - 0.5 * d_on.reward.c_max)
