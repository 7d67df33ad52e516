"""Agents, Coordinator and driver plumbing.

The Ray tests here use ``tests/fake_evaluator.py``, a deterministic TEST DOUBLE of the evaluator,
because they check plumbing only (pairing, exchange, logging, replay on resume, timeouts). The real
evaluator runs in tests/test_search_e2e.py.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle

import fake_evaluator
from agents.pruning_agent import AgentCore, algo_kwargs
from collabprune.config import RunConfig
from collabprune.runs import EVALUATIONS_FILE, RunDir, run_digest
from envs.channel_env import PeerInfo

# the double lives in tests/, which Ray workers cannot import: ship it by value
ray.cloudpickle.register_pickle_by_value(fake_evaluator)


def tiny_cfg(rounds: int = 4, **agents: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"net_g": "resnet_6blocks", "ngf": 8, "ndf": 8},
        "data": {"crop_size": 64, "load_size": 64},
        "pruning": {"round_to": 2, "min_channels": 2, "budget": {"generator": 0.3, "discriminator": 0.5}},
        "search": {"rounds": rounds, "checkpoint_every": 2, "round_timeout_s": 60},
        "agents": {"warmup_episodes": 1, "batch_size": 8, "net_arch": [16, 16], **agents},
    })


# ------------------------------------------------------------------ local (no Ray) agent tests
class LocalLink:
    """In-process Coordinator double for one agent: reward from the ratios, answers logged rounds."""

    def __init__(self, logged: dict[int, dict[str, Any]] | None = None) -> None:
        self.logged = dict(logged or {})
        self.submits: list[int] = []

    def submit(self, role: str, rnd: int, ratios: list[float], frac: float, agent_s: float) -> dict[str, Any]:
        self.submits.append(rnd)
        if rnd not in self.logged:
            self.logged[rnd] = {"ratios": list(ratios), "reward": -abs(frac - 0.4) - 0.01 * rnd}
        rec = self.logged[rnd]
        return {"round": rnd, "reward": rec["reward"], "peer": PeerInfo(macs_fraction=0.1 * rnd).to_dict()}

    def peer_info(self, role: str, rnd: int) -> dict[str, Any]:
        return PeerInfo(macs_fraction=0.1 * rnd).to_dict() if rnd >= 0 else PeerInfo().to_dict()

    def logged_ratios(self, role: str) -> dict[int, list[float]]:
        return {k: v["ratios"] for k, v in self.logged.items()}


@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg", "ppo"])
def test_agent_plays_exactly_the_configured_rounds(tmp_path: Path, algo: str) -> None:
    cfg = tiny_cfg(rounds=3, algo=algo)
    RunDir.create(tmp_path, cfg)
    agent = AgentCore("discriminator", cfg.to_dict(), str(tmp_path), LocalLink(), peer_len=11)
    out = agent.run_rounds()
    assert out["rounds"] == 3 and [h["round"] for h in out["history"]] == [0, 1, 2]
    assert agent.model.num_timesteps == 3 * agent.space.n_groups
    done, folder = RunDir(tmp_path, run_digest(cfg)).latest_checkpoint("discriminator")
    assert done == 3 and (folder / "model.zip").is_file()
    assert (folder / "replay_buffer.pkl").is_file() == (algo != "ppo")
    assert list((tmp_path / "tb" / "discriminator").iterdir())


def test_algo_kwargs_ppo_batches_divide_rollouts() -> None:
    cfg = tiny_cfg(rounds=10, algo="ppo", batch_size=64)
    kw = algo_kwargs(cfg.agents, n_groups=11, rounds=10, checkpoint_every=4, seed=0)
    assert kw["n_steps"] == 44 and 44 % kw["batch_size"] == 0 and kw["batch_size"] <= 64
    kw = algo_kwargs(tiny_cfg(warmup_episodes=3).agents, n_groups=11, rounds=10, checkpoint_every=4, seed=0)
    assert kw["learning_starts"] == 33 and kw["train_freq"] == (1, "episode")


def test_resumed_agent_replays_logged_rounds_into_its_buffer(tmp_path: Path) -> None:
    cfg = tiny_cfg(rounds=4)
    run = RunDir.create(tmp_path, cfg)
    link = LocalLink()
    first = AgentCore("discriminator", cfg.to_dict(), str(tmp_path), link, peer_len=11)
    first.run_rounds()
    logged = dict(link.logged)
    # "kill" after round 3 was logged but before the round-4 checkpoint: back to the round-2 one
    root = run.checkpoint_dir("discriminator")
    shutil.rmtree(root / "round_000004")
    (root / "latest.json").write_text(json.dumps({"folder": "round_000002", "rounds_done": 2,
                                                  "digest": run.digest}))
    link2 = LocalLink(logged)
    second = AgentCore("discriminator", cfg.to_dict(), str(tmp_path), link2, peer_len=11)
    n = second.space.n_groups
    assert second.start_round == 2 and second.model.replay_buffer.pos == 2 * n
    assert second.env.peer.macs_fraction == pytest.approx(0.1)  # the reply of round 1
    out = second.run_rounds()
    assert [h["round"] for h in out["history"]] == [2, 3] and all(h["replayed"] for h in out["history"])
    for h in out["history"]:
        assert h["ratios"] == pytest.approx(logged[h["round"]]["ratios"])
        assert h["reward"] == logged[h["round"]]["reward"]
    # the buffer holds the logged (executed) actions of the replayed rounds
    buf = second.model.replay_buffer
    actions = buf.actions[2 * n : 4 * n, 0, 0]
    expected = [second.space.ratio_to_action(r) for rnd in (2, 3) for r in logged[rnd]["ratios"]]
    assert actions == pytest.approx(expected, abs=1e-6)
    rewards = buf.rewards[2 * n : 4 * n, 0]
    assert rewards[n - 1] == pytest.approx(logged[2]["reward"]) and not rewards[: n - 1].any()


# ------------------------------------------------------------------------ Ray plumbing tests
def _run(cfg: RunConfig, run_dir: Path, resume: bool = False, **fake: Any) -> dict[str, Any]:
    from agents.driver import run_search

    factory = functools.partial(fake_evaluator.FakeEvaluator, **fake) if fake else fake_evaluator.FakeEvaluator
    return run_search(cfg, run_dir, resume=resume, progress=False, evaluator_factory=factory)


def _histories(summary: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    return {a["role"]: {h["round"]: h for h in a["history"]} for a in summary["agents"]}


def test_exchange_and_resume_after_kill(ray_session: None, tmp_path: Path) -> None:
    cfg = tiny_cfg(rounds=4)
    run_dir = tmp_path / "run"
    summary = _run(cfg, run_dir)
    assert summary["rounds"] == 4
    hist = _histories(summary)
    g, d = hist["generator"], hist["discriminator"]
    assert not any(g[0]["peer_block"]) and not any(d[0]["peer_block"])  # nothing known in round 0
    peer_len = len(g[0]["peer_block"]) - 5
    for k in range(3):
        for me, peer in ((g, d), (d, g)):
            block = me[k + 1]["peer_block"]
            n = len(peer[k]["ratios"])
            assert block[:n] == pytest.approx(peer[k]["ratios"], abs=1e-6)
            assert not any(block[n:peer_len])
            assert block[peer_len] == pytest.approx(peer[k]["macs_fraction"], abs=1e-6)
            assert me[k + 1]["peer_seen"]["ratios"] == pytest.approx(peer[k]["ratios"])
            assert any(block[peer_len + 1 : peer_len + 4])  # reward terms of round k
    lines = (run_dir / EVALUATIONS_FILE).read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [-2, -1, 0, 1, 2, 3]
    assert (run_dir / "best.json").is_file() and (run_dir / "plots" / "reward.png").is_file()
    for key in ("mean_agents_s", "mean_coordination_s", "mean_evaluation_s"):
        assert summary["times"][key] >= 0

    # simulate a SIGKILL after round 2 was logged, with both agents' latest checkpoint at round 2
    (run_dir / EVALUATIONS_FILE).write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    run = RunDir(run_dir, run_digest(cfg), load_log=False)
    for role in ("generator", "discriminator"):
        root = run.checkpoint_dir(role)
        shutil.rmtree(root / "round_000004")
        (root / "latest.json").write_text(json.dumps({"folder": "round_000002", "rounds_done": 2,
                                                      "digest": run.digest}))
    resumed = _run(cfg, run_dir, resume=True)
    after = (run_dir / EVALUATIONS_FILE).read_text().splitlines()
    assert [json.loads(x)["round"] for x in after] == [-2, -1, 0, 1, 2, 3]
    assert after[:5] == lines[:5]  # nothing logged was lost, changed or repeated
    assert resumed["rounds"] == 4
    for role, h in _histories(resumed).items():
        assert sorted(h) == [2, 3]
        assert h[2]["replayed"] and not h[3]["replayed"]
        key = "g_ratios" if role == "generator" else "d_ratios"
        assert h[2]["ratios"] == pytest.approx(json.loads(lines[4])[key])
        # the replayed round saw the same peer block as the original run
        assert h[2]["peer_block"] == pytest.approx(hist[role][2]["peer_block"])


def test_no_exchange_and_evaluator_crash(ray_session: None, tmp_path: Path) -> None:
    """exchange=false: all-zero peer blocks. An evaluator process that dies mid-evaluation is
    restarted by Ray and the evaluation retried: the round is logged once."""
    marker = tmp_path / "died"
    summary = _run(tiny_cfg(rounds=2, exchange=False), tmp_path / "run", die_once=str(marker))
    assert marker.is_file()
    for h in _histories(summary).values():
        assert all(not any(x["peer_block"]) for x in h.values())
    rounds = [json.loads(x)["round"] for x in (tmp_path / "run" / EVALUATIONS_FILE).read_text().splitlines()]
    assert rounds == [-2, -1, 0, 1]


def test_slow_evaluation_times_out(ray_session: None, tmp_path: Path) -> None:
    cfg = tiny_cfg(rounds=2)
    cfg.search.round_timeout_s = 2.0
    t0 = time.time()
    with pytest.raises(TimeoutError, match="round_timeout_s"):
        _run(cfg, tmp_path / "run", sleep_s=30.0)
    assert time.time() - t0 < 60
    assert (tmp_path / "run" / EVALUATIONS_FILE).read_text().count("\n") == 2  # teacher + uniform only
