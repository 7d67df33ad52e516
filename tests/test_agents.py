"""Agents, learners, Coordinator and driver plumbing.

The Ray tests here use ``tests/fake_evaluator.py``, a deterministic TEST DOUBLE of the evaluator,
because they check plumbing only (pairing, exchange, logging, replay on resume, re-evaluation,
timeouts). The real evaluator runs in tests/test_search_e2e.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
import ray.cloudpickle

import fake_evaluator
from agents.learners import algo_kwargs
from agents.pruning_agent import AgentCore
from collabprune.config import RunConfig
from collabprune.runs import EVALUATIONS_FILE, REEVALUATIONS_FILE, RunDir, run_digest
from envs.channel_env import N_PEER_SCALARS, PeerInfo
from envs.space import RoleSpace

# the double lives in tests/, which Ray workers cannot import: ship it by value
ray.cloudpickle.register_pickle_by_value(fake_evaluator)


def tiny_cfg(rounds: int = 4, **agents: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"net_g": "resnet_6blocks", "ngf": 8, "ndf": 8},
        "data": {"crop_size": 64, "load_size": 64},
        "pruning": {"round_to": 2, "min_channels": 2, "budget": {"generator": 0.3, "discriminator": 0.5}},
        "search": {"rounds": rounds, "checkpoint_every": 2, "round_timeout_s": 60, "reeval_top_k": 2,
                   "num_evaluators": 1},
        "agents": {"warmup_episodes": 1, "batch_size": 8, "net_arch": [16, 16], **agents},
    })


# ------------------------------------------------------------------ local (no Ray) agent tests
class LocalLink:
    """In-process Coordinator double for ONE agent: the reward is a function of its own proposal;
    logged evaluations are answered from the log."""

    def __init__(self, reward: Any, logged: dict[tuple[int, int], dict[str, Any]] | None = None, slots: int = 1) -> None:
        self.reward = reward
        self.logged = dict(logged or {})
        self.slots = slots
        self.submits: list[int] = []

    def submit(self, role: str, rnd: int, proposals: list[dict[str, Any]], agent_s: float,
               while_waiting: Any = None) -> list[dict[str, Any]]:
        self.submits.append(rnd)
        if while_waiting is not None:
            while_waiting()
        out = []
        for slot, p in enumerate(proposals):
            if (rnd, slot) not in self.logged:
                self.logged[(rnd, slot)] = {"ratios": list(p["ratios"]), "actions": list(p["actions"]),
                                            "reward": self.reward(p["ratios"])}
            rec = self.logged[(rnd, slot)]
            out.append({"reward": rec["reward"], "diverged": False, "peer": self.peer(rnd + 1).to_dict()})
        return out

    def peer(self, rnd: int) -> PeerInfo:
        return PeerInfo(macs_fraction=0.1 * rnd, budget=1.0)

    def peers(self, role: str, rnd: int) -> list[dict[str, Any]]:
        return [self.peer(rnd).to_dict() for _ in range(self.slots)]

    def logged_proposals(self, role: str) -> dict[int, dict[int, dict[str, Any]]]:
        out: dict[int, dict[int, dict[str, Any]]] = {s: {} for s in range(self.slots)}
        for (rnd, slot), rec in self.logged.items():
            out[slot][rnd] = {"ratios": rec["ratios"], "actions": rec["actions"]}
        return out


def budget_use(ratios: list[float]) -> float:
    return float(np.mean(ratios))


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac", "ppo"])
def test_agent_plays_exactly_the_configured_rounds(tmp_path: Path, algo: str) -> None:
    cfg = tiny_cfg(rounds=3, algo=algo, rollout_episodes=1)
    RunDir.create(tmp_path, cfg, slots=2)
    agent = AgentCore("discriminator", cfg.to_dict(), str(tmp_path), LocalLink(budget_use, slots=2), peer_len=11,
                      slots=2)
    out = agent.run_rounds()
    assert out["rounds"] == 3 and [(h["round"], h["slot"]) for h in out["history"]] == [
        (r, s) for r in range(3) for s in range(2)]
    assert agent.model.num_timesteps == 3 * 2 * agent.space.n_groups
    done, folder = RunDir(tmp_path, run_digest(cfg)).latest_checkpoint("discriminator")
    assert done == 3 and (folder / "model.zip").is_file()
    assert (folder / "replay_buffer.pkl").is_file() == (algo != "ppo")
    assert list((tmp_path / "tb" / "discriminator").iterdir())


def test_algo_kwargs() -> None:
    kw = algo_kwargs(tiny_cfg(algo="ppo", batch_size=64, rollout_episodes=4).agents, n_groups=11, n_envs=2, seed=0)
    assert kw["n_steps"] == 44 and 88 % kw["batch_size"] == 0 and kw["batch_size"] <= 64
    assert kw["gamma"] == 1.0 and kw["gae_lambda"] == 1.0
    kw = algo_kwargs(tiny_cfg(warmup_episodes=3).agents, n_groups=11, n_envs=2, seed=0)
    assert kw["learning_starts"] == 66 and kw["train_freq"] == (11, "step") and kw["gamma"] == 1.0


def test_episode_reward_is_credited_to_every_step(tmp_path: Path) -> None:
    cfg = tiny_cfg(rounds=3, algo="ddpg")
    RunDir.create(tmp_path, cfg, slots=2)
    link = LocalLink(budget_use, slots=2)
    agent = AgentCore("generator", cfg.to_dict(), str(tmp_path), link, peer_len=11, slots=2)
    agent.run_rounds()
    buf, n = agent.model.replay_buffer, agent.space.n_groups
    assert buf.pos == 3 * n  # (buffer rows, envs): one row per step of a round, one column per slot
    for rnd in range(3):
        for slot in range(2):
            rewards = buf.rewards[rnd * n:(rnd + 1) * n, slot]
            assert rewards == pytest.approx([link.logged[(rnd, slot)]["reward"]] * n)
            assert buf.dones[rnd * n:(rnd + 1) * n, slot].all()
            # the executed (projected) actions are stored, not the sampled ones
            expected = [agent.space.ratio_to_action(r) for r in link.logged[(rnd, slot)]["ratios"]]
            assert buf.actions[rnd * n:(rnd + 1) * n, slot, 0] == pytest.approx(expected, abs=1e-5)
    served = buf._normalize_reward(buf.rewards[:3 * n].reshape(-1, 1))
    assert abs(float(served.mean())) < 1e-5 and float(served.std()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_learns_a_known_best_allocation(tmp_path: Path, seed: int) -> None:
    """On a synthetic reward whose best allocation is known (no fine-tuning): minus the distance, in
    log2 keep ratio, to an allocation that keeps the high-resolution groups wide, plus noise. Within 80
    rounds, at two search seeds: the best proposal found (what a search returns) is less than half as
    far from it as the uniform candidate, the last rounds score better than the first ones by more than
    the reward's noise, and the deterministic policy has moved towards it."""
    cfg = RunConfig.model_validate({
        "model": {"net_g": "unet_128", "ngf": 16, "ndf": 16},
        "data": {"crop_size": 128, "load_size": 128},
        "pruning": {"round_to": 4, "min_channels": 4, "r_min": 0.1, "budget": {"generator": 0.25}},
        "search": {"rounds": 80, "checkpoint_every": 1000, "seed": seed},
    })
    from benchmarks.learning_schedule import KnownBestReward

    space = RoleSpace.from_config("generator", cfg)
    reward = KnownBestReward(space, seed, noise_std=0.05)
    distance = reward.distance
    RunDir.create(tmp_path, cfg)
    link = LocalLink(reward)
    agent = AgentCore("generator", cfg.to_dict(), str(tmp_path), link)
    agent.run_rounds()
    policy = agent.deterministic_ratios()
    uniform = distance(space.uniform_candidate())
    true = [-distance(rec["ratios"]) for _, rec in sorted(link.logged.items())]
    assert -max(true) < 0.5 * uniform
    assert np.mean(true[-20:]) > np.mean(true[:10]) + 3 * 0.05 / np.sqrt(10)
    assert distance(policy) < 0.9 * uniform


def test_self_imitation_pulls_the_actor_to_the_best_episodes(tmp_path: Path) -> None:
    """A buffer where one stored action (0.8) always scored best: in the same few gradient steps the
    actor with self-imitation moves towards it more than twice as far as the same learner without."""
    moved = {}
    for weight in (0.0, 10.0):
        cfg = tiny_cfg(rounds=1, self_imitation=weight, mean_action_penalty=0.0, learning_rate=1e-3)
        RunDir.create(tmp_path / str(weight), cfg)
        agent = AgentCore("generator", cfg.to_dict(), str(tmp_path / str(weight)), LocalLink(budget_use), peer_len=11)
        model = agent.model
        obs = agent.env.reset()[0][None]
        rng = np.random.default_rng(0)
        for i in range(64):
            best = i % 8 == 0
            action = np.array([[0.8 if best else rng.uniform(-1.0, 1.0)]], dtype=np.float32)
            model.replay_buffer.add(obs, obs, action, np.array([1.0 if best else -1.0], dtype=np.float32),
                                    np.array([1.0], dtype=np.float32), [{}])

        def gap() -> float:
            with torch.no_grad():
                return abs(float(model.actor(torch.as_tensor(obs)).reshape(-1)[0]) - 0.8)

        before = gap()
        torch.manual_seed(0)
        model.train(gradient_steps=30, batch_size=32)
        moved[weight] = before - gap()
    assert moved[10.0] > max(0.1, 2 * moved[0.0]), moved


def test_auto_schedule_learns_during_evaluation_from_four_candidates_at_once(tmp_path: Path) -> None:
    """agents.learn_during_evaluation: auto (the default) learns sequentially below 4 candidates evaluated
    at once and during evaluation from 4; true/false as set; PPO always sequentially. At once: the run's
    slots, at most the evaluator pool it started with (4 budgets on one evaluator: one at a time)."""
    from agents.learners import learns_during_evaluation

    auto = tiny_cfg().agents
    assert auto.learn_during_evaluation == "auto"
    assert [learns_during_evaluation(auto, n) for n in (1, 2, 3, 4, 8)] == [False, False, False, True, True]
    assert learns_during_evaluation(tiny_cfg(learn_during_evaluation=True).agents, 1)
    assert not learns_during_evaluation(tiny_cfg(learn_during_evaluation=False).agents, 8)
    assert not learns_during_evaluation(tiny_cfg(algo="ppo", learn_during_evaluation=True).agents, 8)
    assert algo_kwargs(auto, 5, 4, 0)["gradient_steps"] == 0 and algo_kwargs(auto, 5, 2, 0)["gradient_steps"] == -1
    assert algo_kwargs(auto, 5, 4, 0, at_once=1)["gradient_steps"] == -1
    for evaluators, during in ((1, False), (4, True)):
        cfg = tiny_cfg(rounds=1)
        run = RunDir.create(tmp_path / str(evaluators), cfg, slots=4, evaluators=evaluators)
        assert run.evaluations_at_once == evaluators
        agent = AgentCore("generator", cfg.to_dict(), str(run.path), LocalLink(budget_use, slots=4), peer_len=11, slots=4)
        assert agent.learns_during_evaluation is during
        assert agent.model.gradient_steps == (0 if during else -1)


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_terminal_transitions_skip_the_target_networks_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               algo: str) -> None:
    """Every stored transition is terminal (episode credit), so the TD3/DDPG step takes the reward as the
    critic's target without the target networks: the same proposals and the same actor and critic as
    SB3's bootstrapped target r + (1 - done) * gamma * Q'(s', mu'(s'))."""
    from agents.learners import ALGORITHMS

    def run(folder: Path) -> tuple[list[list[float]], list[torch.Tensor], bool]:
        cfg = tiny_cfg(rounds=5, algo=algo, warmup_episodes=1)
        RunDir.create(folder, cfg, slots=2)
        agent = AgentCore("generator", cfg.to_dict(), str(folder), LocalLink(budget_use, slots=2), peer_len=11, slots=2)
        targets = [p.detach().clone() for p in agent.model.actor_target.parameters()]
        out = agent.run_rounds()
        assert agent.model._n_updates > 0
        params = [p.detach().clone() for n, p in agent.model.policy.named_parameters() if "target" not in n]
        targets_moved = not all(torch.equal(a, b) for a, b in zip(targets, agent.model.actor_target.parameters()))
        return [h["ratios"] for h in out["history"]], params, targets_moved

    shortcut = run(tmp_path / "shortcut")
    monkeypatch.setattr(ALGORITHMS[algo], "terminal_transitions_only", False)
    bootstrapped = run(tmp_path / "bootstrapped")
    assert shortcut[0] == bootstrapped[0]
    assert all(torch.equal(a, b) for a, b in zip(shortcut[1], bootstrapped[1]))
    assert not shortcut[2] and bootstrapped[2]  # the shortcut was taken: no Polyak update of the targets


def test_learning_during_evaluation_takes_the_same_steps_one_round_later(tmp_path: Path) -> None:
    """agents.learn_during_evaluation: at the submit of round r the steps SB3 would have taken after
    round r-1, inside the Coordinator wait except the first agents.steps_before_proposal of them, which
    come before round r's proposals; the pending ones after the last round; the same total as the
    sequential learner. auto: sequential with 2 candidates a round, during evaluation with 4."""
    totals = {}
    for overlap, first, slots in ((False, 0, 2), (True, 0, 2), (True, 3, 2), ("auto", 0, 2), ("auto", 2, 4)):
        cfg = tiny_cfg(rounds=4, algo="td3", warmup_episodes=1, learn_during_evaluation=overlap,
                       steps_before_proposal=first)
        folder = tmp_path / f"{overlap}{first}{slots}"
        RunDir.create(folder, cfg, slots=slots)
        before: dict[int, int] = {}
        during: dict[int, int] = {}

        class Recording(LocalLink):
            def submit(self, role: str, rnd: int, proposals: list[dict[str, Any]], agent_s: float,
                       while_waiting: Any = None) -> list[dict[str, Any]]:
                start = agent.model._n_updates
                before[rnd] = start - sum(before.values()) - sum(during.values())  # since the last wait
                out = super().submit(role, rnd, proposals, agent_s, while_waiting)
                during[rnd] = agent.model._n_updates - start
                return out

        agent = AgentCore("generator", cfg.to_dict(), str(folder), Recording(budget_use, slots=slots),
                          peer_len=11, slots=slots)
        out = agent.run_rounds()
        per_round = agent.space.n_groups * slots
        assert per_round > 3
        assert agent.learns_during_evaluation is (overlap is True or (overlap == "auto" and slots >= 4))
        if agent.learns_during_evaluation:
            assert before == {0: 0, 1: 0, 2: first, 3: first}
            assert during == {0: 0, 1: 0, 2: per_round - first, 3: per_round - first}
            assert out["times"]["learn_s"] > 0
        else:  # SB3's loop: after rounds 1 and 2, before the next proposals; nothing while waiting
            assert before == {0: 0, 1: 0, 2: per_round, 3: per_round} and set(during.values()) == {0}
            assert out["times"]["learn_s"] == 0
        totals[overlap, first, slots] = agent.model._n_updates / slots
    assert set(totals.values()) == {3 * agent.space.n_groups}


@pytest.mark.parametrize("overlap,first", [(False, 0), (True, 0), (True, 2)],
                         ids=["sequential", "learn_during_evaluation", "split"])
def test_resumed_agent_replays_logged_rounds_into_its_buffer(tmp_path: Path, overlap: bool, first: int) -> None:
    cfg = tiny_cfg(rounds=4, learn_during_evaluation=overlap, steps_before_proposal=first)
    run = RunDir.create(tmp_path, cfg)
    link = LocalLink(budget_use)
    first = AgentCore("discriminator", cfg.to_dict(), str(tmp_path), link, peer_len=11)
    first.run_rounds()
    logged = dict(link.logged)
    buf1 = first.model.replay_buffer
    # "kill" after round 3 was logged but before the round-4 checkpoint: back to the round-2 one
    root = run.checkpoint_dir("discriminator")
    shutil.rmtree(root / "round_000004")
    (root / "latest.json").write_text(json.dumps({"folder": "round_000002", "rounds_done": 2,
                                                  "digest": run.digest}))
    second = AgentCore("discriminator", cfg.to_dict(), str(tmp_path), LocalLink(budget_use, logged), peer_len=11)
    n = second.space.n_groups
    assert second.start_round == 2 and second.model.replay_buffer.pos == 2 * n
    out = second.run_rounds()
    assert [h["round"] for h in out["history"]] == [2, 3] and all(h["replayed"] for h in out["history"])
    for h in out["history"]:
        assert h["ratios"] == pytest.approx(logged[(h["round"], 0)]["ratios"])
        assert h["reward"] == logged[(h["round"], 0)]["reward"]
    # the buffer holds exactly what the original run stored, and the learner ends in the same state
    buf = second.model.replay_buffer
    for name in ("observations", "actions", "rewards", "dones"):
        assert np.array_equal(getattr(buf, name)[: 4 * n], getattr(buf1, name)[: 4 * n]), name
    for (k, a), b in zip(first.model.policy.state_dict().items(), second.model.policy.state_dict().values()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------ Ray plumbing tests
def _run(cfg: RunConfig, run_dir: Path, resume: bool = False, **fake: Any) -> dict[str, Any]:
    from agents.driver import run_search

    factory = functools.partial(fake_evaluator.FakeEvaluator, **fake) if fake else fake_evaluator.FakeEvaluator
    return run_search(cfg, run_dir, resume=resume, progress=False, evaluator_factory=factory)


def _histories(summary: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    return {a["role"]: {h["round"]: h for h in a["history"]} for a in summary["agents"]}


def test_exchange_evaluator_crash_and_resume_after_kill(ray_session: None, tmp_path: Path) -> None:
    """The D agent sees G's proposal of the same round; an evaluator process that dies mid-evaluation
    is restarted by Ray and the evaluation retried (the round is logged once); a search killed after
    round 2 resumes, replaying what was logged since the agents' checkpoints."""
    cfg = tiny_cfg(rounds=4)
    run_dir = tmp_path / "run"
    marker = tmp_path / "died"
    summary = _run(cfg, run_dir, die_once=str(marker))
    assert marker.is_file() and summary["rounds"] == 4
    hist = _histories(summary)
    g, d = hist["generator"], hist["discriminator"]
    spaces = {r: RoleSpace.from_config(r, cfg) for r in ("generator", "discriminator")}
    peer_len = len(g[0]["peer_block"]) - N_PEER_SCALARS
    assert not any(g[0]["peer_block"])  # the generator knows nothing in round 0
    for k in range(4):
        # the discriminator sees the generator's proposal of the SAME round
        block = d[k]["peer_block"]
        n = len(g[k]["ratios"])
        assert block[:n] == pytest.approx([spaces["generator"].ratio_to_action(r) for r in g[k]["ratios"]], abs=1e-5)
        assert block[peer_len + 5] == 1.0 and d[k]["peer_seen"]["same_round"] == 1.0
        if k:  # the generator sees the discriminator's previous proposal and the last outcome
            block = g[k]["peer_block"]
            m = len(d[k - 1]["ratios"])
            assert block[:m] == pytest.approx([spaces["discriminator"].ratio_to_action(r)
                                               for r in d[k - 1]["ratios"]], abs=1e-5)
            assert block[peer_len + 5] == 0.0 and any(block[peer_len + 1: peer_len + 4])
    lines = (run_dir / EVALUATIONS_FILE).read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [-2, -1, 0, 1, 2, 3]
    best = json.loads((run_dir / "best.json").read_text())
    assert "reeval" in best and len(best["reeval"]["candidates"]) == 3  # uniform + top 2
    assert (run_dir / REEVALUATIONS_FILE).read_text().count("\n") == 3 * 2
    assert (run_dir / "plots" / "reward.png").is_file()
    for key in ("mean_agents_s", "mean_coordination_s", "mean_evaluation_s"):
        assert summary["times"][key] >= 0

    # simulate a SIGKILL after round 2 was logged, with both agents' latest checkpoint at round 2
    (run_dir / EVALUATIONS_FILE).write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    (run_dir / REEVALUATIONS_FILE).unlink()
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


def test_without_exchange_every_peer_block_is_empty(tmp_path: Path) -> None:
    """agents.exchange=false: the Coordinator gives both agents all-zero peer blocks, before and after a
    logged round (with exchange on, the same log gives D the generator's proposal)."""
    import asyncio

    from agents.coordinator import CoordinatorCore

    for exchange in (False, True):
        cfg = tiny_cfg(rounds=2, exchange=exchange)
        fake = fake_evaluator.FakeEvaluator(cfg, tmp_path / str(exchange))
        run = RunDir.create(tmp_path / str(exchange), cfg)
        run.append(dataclasses.replace(fake.evaluate_teacher(), round=-2, seed=0))
        baseline = run.append(dataclasses.replace(fake.evaluate_uniform(1), round=-1, seed=1))
        g, d = fake.uniform_ratios()
        run.append(dataclasses.replace(fake.evaluate(g, d, 0, baseline.metrics), round=0, seed=0))
        core = CoordinatorCore(cfg.to_dict(), str(tmp_path / str(exchange)), evaluators=[])
        # G proposing rounds 0 and 1 (after round 0: D's proposal and the outcome), D proposing the
        # logged round 0 (G's proposal of that round)
        asked = [("generator", 0), ("generator", 1), ("discriminator", 0)]
        blocks = {key: PeerInfo.from_dict(asyncio.run(core.peers(*key))[0]) for key in asked}
        vectors = {key: b.to_vector(11) for key, b in blocks.items()}
        if not exchange:
            assert not any(v.any() for v in vectors.values())
        else:
            assert not vectors[("generator", 0)].any()  # nothing is known before round 0
            assert vectors[("generator", 1)].any() and vectors[("discriminator", 0)].any()
            assert blocks[("discriminator", 0)].same_round == 1.0


def test_discriminator_agent_alone_learns_the_adversarial_pull(tmp_path: Path) -> None:
    """reward.w_pull_d > 0: the Coordinator answers the D agent with the team reward minus
    ``w_pull_d * t_pull`` and the G agent with the team reward (a logged round, answered from the log);
    the logged reward and best.json's stay the team's. At 0 both agents get the team reward."""
    import asyncio

    from agents.coordinator import CoordinatorCore
    from collabprune.records import Metrics

    for weight in (0.0, 0.5):
        cfg = tiny_cfg(rounds=2)
        cfg = RunConfig.model_validate({**cfg.to_dict(), "reward": {**cfg.reward.model_dump(), "w_pull_d": weight,
                                                                    "w_team_d": 1.0}})
        root = tmp_path / str(weight)
        fake = fake_evaluator.FakeEvaluator(cfg, root)
        run = RunDir.create(root, cfg)
        run.append(dataclasses.replace(fake.evaluate_teacher(), round=-2, seed=0))
        uniform = fake.evaluate_uniform(1)
        uniform = run.append(dataclasses.replace(uniform, round=-1, seed=1, metrics=Metrics(uniform.metrics, pull=0.4)))
        g, d = fake.uniform_ratios()
        found = fake.evaluate([min(1.0, r * 1.2) for r in g], d, 0, uniform.metrics)
        logged = run.append(dataclasses.replace(found, round=0, seed=0, metrics=Metrics(found.metrics, pull=0.6)))
        core = CoordinatorCore(cfg.to_dict(), str(root), evaluators=[])
        replies = {}
        for role in ("generator", "discriminator"):
            proposal = {"ratios": g if role == "generator" else d, "space_digest": core.blocks.spaces[role].channels.digest}
            replies[role] = asyncio.run(core.submit(role, 0, [proposal]))[0]["reward"]
        assert replies["generator"] == pytest.approx(logged.reward)
        assert replies["discriminator"] == pytest.approx(logged.reward - weight * 0.6 / 0.4)
        assert run.best().reward == pytest.approx(logged.reward)


def test_slow_evaluation_times_out(ray_session: None, tmp_path: Path) -> None:
    """An evaluation longer than search.round_timeout_s ends the search with an error naming the limit;
    the cut evaluation (it would sleep 30 s and then be logged) is not logged. No wall-clock check: the
    start-up of a loaded machine may take longer than the whole evaluation."""
    cfg = tiny_cfg(rounds=2)
    cfg.search.round_timeout_s = 2.0
    with pytest.raises(TimeoutError, match=r"round 0 slot 0: evaluation took longer than search\.round_timeout_s=2 s"):
        _run(cfg, tmp_path / "run", sleep_s=30.0)
    assert (tmp_path / "run" / EVALUATIONS_FILE).read_text().count("\n") == 2  # teacher + uniform only


def test_agent_actor_killed_resumes_from_its_checkpoint_and_replays_exactly(ray_session: Any, tmp_path: Path) -> None:
    """SIGKILL the generator agent's process mid-search: Ray restarts the actor, it loads its latest
    checkpoint, replays the rounds logged since, and the search goes on. Every round is logged exactly
    once, and the log is identical to an uninterrupted run's (same proposals, same rewards). The agents
    learn during evaluation (agents.learn_during_evaluation), so their gradient steps run inside the
    Ray call that waits for the Coordinator, and the replay must reproduce them too."""
    import os
    import signal
    import threading

    from ray.util.state import list_actors

    cfg = tiny_cfg(rounds=8, learn_during_evaluation=True)
    reference = _run(cfg, tmp_path / "reference", sleep_s=0.3)
    assert reference["rounds"] == 8

    run_dir = tmp_path / "run"
    log = run_dir / EVALUATIONS_FILE
    out: dict[str, Any] = {}
    search = threading.Thread(target=lambda: out.update(summary=_run(cfg, run_dir, sleep_s=0.3)))
    search.start()
    deadline = time.time() + 240

    def wait_until(ready: Callable[[], bool], what: str, poll_s: float) -> None:
        while not ready():
            assert search.is_alive() and time.time() < deadline, f"search ended or stalled before {what}"
            time.sleep(poll_s)

    def logged_rounds() -> set[int]:
        lines = log.read_text().splitlines() if log.is_file() else []
        return {json.loads(x)["round"] for x in lines if x.endswith("}")}

    def generator_agents() -> list[Any]:
        return [a for a in list_actors(address=ray_session.gcs_address, filters=[("state", "=", "ALIVE")],
                                       detail=True) if a.repr_name == "PruningAgent(generator)"]

    # the reference run's actors are gone: the one live generator agent is this run's. Find it first,
    # then kill it as soon as round 4 is logged: checkpoints are written at the start of rounds 2, 4, 6,
    # so the restarted actor starts at round 4 and must replay round 4 (a kill right after a checkpoint
    # round would leave nothing to replay).
    wait_until(lambda: len(generator_agents()) == 1 and 0 in logged_rounds(), "the agents started", 0.1)
    (agent,) = generator_agents()
    wait_until(lambda: 4 in logged_rounds(), "the kill point", 0.02)
    os.kill(agent.pid, signal.SIGKILL)
    search.join(timeout=300)
    assert not search.is_alive() and "summary" in out
    summary = out["summary"]

    def fields(path: Path) -> list[tuple]:
        return [(r["round"], r.get("slot"), r.get("g_ratios"), r.get("d_ratios"), r.get("reward"))
                for r in map(json.loads, (path / EVALUATIONS_FILE).read_text().splitlines())]

    assert fields(run_dir) == fields(tmp_path / "reference")  # each round once, as without the kill
    g = next(a for a in summary["agents"] if a["role"] == "generator")
    assert g["start_round"] == 4 and g["rounds"] == 8  # the restarted actor began at its latest checkpoint
    replayed = [h["round"] for h in g["history"] if h["replayed"]]
    assert replayed[:1] == [4] and replayed == list(range(4, 4 + len(replayed)))


def test_coordinator_refuses_a_proposal_from_another_channel_space(tmp_path: Path) -> None:
    """A proposal is checked against the Coordinator's channel space (its digest) before anything is
    evaluated or logged."""
    import asyncio

    from agents.coordinator import CoordinatorCore
    from collabprune.errors import SpaceMismatchError

    cfg = tiny_cfg(rounds=1)
    fake = fake_evaluator.FakeEvaluator(cfg, tmp_path)
    run = RunDir.create(tmp_path, cfg)
    run.append(dataclasses.replace(fake.evaluate_teacher(), round=-2, seed=0))
    run.append(dataclasses.replace(fake.evaluate_uniform(1), round=-1, seed=1))
    core = CoordinatorCore(cfg.to_dict(), str(tmp_path), evaluators=[])
    g, _ = fake.uniform_ratios()
    proposal = {"ratios": g, "requested": g, "actions": [0.0] * len(g), "macs_fraction": 0.3,
                "space_digest": "0123456789abcdef"}
    with pytest.raises(SpaceMismatchError, match="round 0 slot 0: the generator agent's channel space"):
        asyncio.run(core.submit("generator", 0, [proposal]))
    assert [r.round for r in RunDir(tmp_path, run.digest).search_records()] == []


def test_search_with_a_latency_budget(ray_session: None, tmp_path: Path) -> None:
    """A G budget in milliseconds: the driver measures the latency model into the run before anything
    starts (here it finds one for the same network and reuses it), the run's config points at it, and
    every logged G candidate is within the target as the model predicts it; D keeps its MACs budget."""
    from collabprune.latency_budget import ensure_latency_model

    run_dir = tmp_path / "run"
    probe = RunConfig.model_validate({**tiny_cfg().to_dict(), "pruning": {
        **tiny_cfg().pruning.model_dump(), "latency_samples": 6, "budget": {"generator": {"latency_ms": 1e3}}}})
    probe = ensure_latency_model(probe, run_dir)
    space = RoleSpace.from_config("generator", probe).channels
    target = space.teacher_cost * (1 + space.min_fraction()) / 2  # feasible, and well below the teacher
    data = probe.to_dict()
    data["pruning"].update(latency_model=None, budget={"generator": {"latency_ms": target}, "discriminator": 0.5})
    cfg = RunConfig.model_validate(data)
    summary = _run(cfg, run_dir)
    assert summary["rounds"] == 4
    saved = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert saved.pruning.latency_model == (run_dir / "latency_model.json").resolve()
    g = RoleSpace.from_config("generator", saved)
    d = RoleSpace.from_config("discriminator", saved)
    records = [json.loads(x) for x in (run_dir / EVALUATIONS_FILE).read_text().splitlines()]
    searched = [r for r in records if r["round"] >= -1]  # the uniform candidate and every search round
    assert len(searched) == 5
    for r in searched:
        predicted = g.channels.cost_of_kept(g.kept(r["g_ratios"]))
        assert predicted <= target * (1 + 1e-9), (r["round"], predicted, target)
        assert d.channels.macs_fraction(r["d_ratios"]) <= 0.5 + 1e-9


def test_multi_budget_search_one_policy_per_role(ray_session: None, tmp_path: Path) -> None:
    """``search.budgets``: slot s of every round searches budget s mod K against that budget's own
    uniform candidate (round -1, slot k), the generator's one policy observes the budget, every G
    proposal is projected onto its slot's budget, each budget gets its re-evaluated best in
    ``front.json`` (``best.json`` is the primary budget's), ``export --budget`` picks it, and
    ``inspect`` rolls the generator's policy out at every budget and draws the front."""
    from agents.inspect_policies import inspect_run
    from collabprune.errors import RunDirError
    from collabprune.evaluation import compute_reward
    from collabprune.export import best_for_budget

    data = tiny_cfg(rounds=3).to_dict()
    data["search"]["budgets"] = [0.5, 0.3, 0.15]  # the primary budget (pruning.budget.generator) is 0.3
    cfg = RunConfig.model_validate(data)
    run_dir = tmp_path / "run"
    summary = _run(cfg, run_dir)
    assert summary["slots"] == 3 and summary["evaluations"] == 9  # one evaluator, rounded up to 3 budgets
    run = RunDir.read(run_dir)
    assert run.evaluations_at_once == 1  # the driver recorded its pool: one evaluation at a time
    budgets = [0.3, 0.5, 0.15]  # primary first, then the others as given
    assert run.budgets() == budgets and run.primary_budget == 0.3
    g = RoleSpace.from_config("generator", cfg)
    uniform = [run.get(-1, slot=k) for k in range(3)]
    for k, u in enumerate(uniform):
        assert u is not None and u.budget == budgets[k]
        assert u.g_ratios == g.at_budget(budgets[k]).uniform_candidate()
    observed = set()
    for r in run.search_records():
        b = budgets[r.slot]
        assert r.budget == b
        assert 0.98 * b <= g.macs_fraction(r.g_ratios) <= b + 1e-9, (r.round, r.slot)
        assert r.reward == pytest.approx(compute_reward(r.metrics, uniform[r.slot].metrics, cfg)[0])
        observed.add(b)
    assert observed == set(budgets)
    front = run.read_front()
    assert [r.budget for r in front] == budgets
    assert all(r.reeval is not None for r in front)
    assert run.read_best() == front[0]
    assert summary["front"][2]["budget"] == 0.15
    assert best_for_budget(run, 0.15) == front[2] and best_for_budget(run, None) == front[0]
    with pytest.raises(RunDirError, match="this run's budgets: 0.3, 0.5, 0.15"):
        best_for_budget(run, 0.2)
    # the generator's one policy, rolled out at each budget (its observation holds it), proposes within it
    report = inspect_run(run_dir, out_dir=tmp_path / "plots")
    gen = [a for a in report["agents"] if a["role"] == "generator"]
    assert [a["budget"] for a in gen] == budgets
    fractions = [a["executed_macs_fraction"] for a in gen]
    assert all(0.98 * b <= f <= b + 1e-9 for b, f in zip(budgets, fractions))
    assert (tmp_path / "plots" / "front.png").is_file()
    pts = [(p["g_macs_fraction"], p["fd"]) for p in report["front"]]
    assert pts and pts == sorted(pts) and all(a[1] > b[1] for a, b in zip(pts, pts[1:]))  # cheaper = worse
    assert all(p["latency_ms"] > 0 for p in report["front"])


def test_pareto_front() -> None:
    from collabprune.front import pareto_front

    costs = [0.5, 0.3, 0.3, 0.1, 0.4, float("nan"), 0.2]
    scores = [1.0, 2.0, 1.5, 3.0, 1.2, 0.1, 3.5]
    # 0.1 -> 3.0, 0.3 -> 1.5, 0.4 -> 1.2, 0.5 -> 1.0; (0.2, 3.5) and (0.3, 2.0) are dominated; nan never
    assert pareto_front(costs, scores) == [3, 2, 4, 0]
    assert pareto_front([0.2, 0.2], [1.0, 1.0]) == [0]
    with pytest.raises(ValueError):
        pareto_front([0.1], [])
