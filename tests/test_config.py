"""Config loading, overrides and one-line field errors (collabprune.config, CLI exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collabprune.cli import main
from collabprune.config import RunConfig, load_config
from collabprune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_and_demo_config_validate() -> None:
    assert load_config(None).model.net_g == "unet_256"
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert demo.model.net_g == "unet_128" and demo.reward.fid.mode == "fd_teacher_d"


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["search.rounds=7", "pruning.budget.generator=0.4", "agents.net_arch=[32,32]",
                             "model.use_dropout=false"])
    assert cfg.search.rounds == 7 and cfg.pruning.budget.generator == 0.4
    assert cfg.agents.net_arch == [32, 32] and cfg.model.use_dropout is False


def test_digest_changes_with_content() -> None:
    assert RunConfig().digest() == RunConfig().digest()
    assert load_config(None, ["search.seed=1"]).digest() != RunConfig().digest()


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["model.net_g=unet_512"], ["model.net_g", "'unet_512'", "unet_256"]),
        (["pruning.budget.generator=1.5"], ["pruning.budget.generator", "1.5", "less than or equal to 1"]),
        (["search.roundz=3"], ["unknown field", "search.roundz"]),
        (["finetune.steps=abc"], ["finetune.steps", "'abc'", "integer"]),
        (["pruning.r_min=0.9", "pruning.r_max=0.5"], ["r_min=0.9", "r_max=0.5"]),
        (["norole"], ["expected key.sub=value"]),
        (["search.budgets=[0.5,0.1]"], ["pruning.budget.generator=0.25 is not one of search.budgets=[0.5, 0.1]"]),
        (["search.budgets=[0.25,0.25]"], ["search.budgets=[0.25, 0.25] repeats a budget"]),
        (["search.budgets=[0.25,1.5]"], ["search.budgets.1", "1.5", "less than or equal to 1"]),
        (["search.budgets=[0.25]", "pruning.budget.generator={latency_ms: 2.0}"], ["needs a MACs generator budget"]),
        (["agents.learn_during_evaluation=maybe"], ["field 'agents.learn_during_evaluation' has bad value 'maybe'",
                                                    "valid boolean", "'auto'"]),
    ],
)
def test_bad_values_give_one_line(overrides: list[str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  norm: group\n")
    code = main(["train-teacher", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "model.norm" in err and "'group'" in err and "Traceback" not in err


def test_no_progress_flag_before_or_after_the_command() -> None:
    from collabprune.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--no-progress", "search", "c.yaml"]).no_progress is True
    assert parser.parse_args(["search", "c.yaml", "--no-progress"]).no_progress is True
    assert parser.parse_args(["demo"]).no_progress is False


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    assert load_config(path).digest()


@pytest.mark.parametrize("path, overrides, expected", [
    ("demo.yaml", [], (0.0, 1.0)),  # paired data: the D agent learns from its pull
    ("pix2pix_facades.yaml", [], (0.0, 1.0)),
    ("cyclegan_demo.yaml", [], (1.0, 0.0)),  # unpaired: DESIGN.md §4's team reward
    ("demo.yaml", ["finetune.lambda_l1=0"], (1.0, 0.0)),  # no L1 term: no pull to measure
    ("demo.yaml", ["reward.w_pull_d=0"], (1.0, 0.0)),  # the team reward asked for, either way
    ("demo.yaml", ["reward.w_team_d=1"], (1.0, 0.0)),
    ("demo.yaml", ["reward.w_pull_d=0.5"], (0.0, 0.5)),
    ("demo.yaml", ["reward.w_team_d=0"], (0.0, 1.0)),
    ("demo.yaml", ["reward.w_team_d=1", "reward.w_pull_d=0.5"], (1.0, 0.5)),
])
def test_d_agent_reward_weights_resolve_by_family(path: str, overrides: list[str],
                                                   expected: tuple[float, float]) -> None:
    """Unset ``reward.w_team_d`` / ``reward.w_pull_d`` resolve at load: paired data with an L1 term gives the
    D agent its own adversarial pull (0, 1), anything else the team reward (1, 0); one weight set fixes the
    other. The resolved numbers are what the run's config (and its digest) holds."""
    cfg = load_config(REPO / "configs" / path, overrides)
    assert (cfg.reward.w_team_d, cfg.reward.w_pull_d) == expected
    assert RunConfig.model_validate(cfg.to_dict()).digest() == cfg.digest()


def test_d_agent_pull_on_unpaired_data_is_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"reward.w_team_d=0 leaves the discriminator agent only its pull.*"
                                          r"model.family=cyclegan.*allowed: reward.w_team_d > 0"):
        load_config(REPO / "configs" / "cyclegan_demo.yaml", ["reward.w_team_d=0"])
