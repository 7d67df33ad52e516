"""End to end: a short real search through the CLI, killed with SIGKILL mid-run, then resumed.

The search runs against the test session's Ray head (``--address``); killing its process kills the
search's driver, and Ray ends the actors it owned (agents, coordinator, evaluators), as on a crash.

Uses the real CandidateEvaluator on a tiny config (64x64 demo crops, resnet_6blocks ngf=8, a
randomly initialised teacher saved with upstream file names, a few fine-tuning steps, the offline
``fd_teacher_d`` metric). The search runs as ``python -m collabprune.cli search`` in its own process
session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from collabprune.cli import main
from collabprune.config import load_config, save_config
from collabprune.data.demo import build_demo_dataset
from collabprune.models import build_discriminator, build_generator, load_candidate, load_subnet
from collabprune.pruning.space import ChannelSpace
from collabprune.runs import candidate_dir
from collabprune.summary import FINAL_DIR, FINAL_UNIFORM_DIR, HELDOUT_DIR, summarise_run
from ray_head import RayHead, session_pids
from tiny import short_eval_net

ROUNDS = 5
KILL_AFTER = 3  # search rounds in the log when the search is killed
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset, random teacher and config file; returns the config path."""
    root = tmp_path_factory.mktemp("e2e")
    build_demo_dataset(root / "data", size=64, crops_per_image=2, seed=0)
    cfg = load_config(None, [
        f"data.root={root / 'data'}", "data.load_size=72", "data.crop_size=64",
        "model.net_g=resnet_6blocks", "model.ngf=8", "model.ndf=8", "model.norm=instance",
        f"teacher.checkpoint_dir={root / 'teacher'}", "finetune.device=cpu", "finetune.steps=4",
        "finetune.batch_size=2", "reward.fid.mode=fd_teacher_d", "reward.fid.max_images=4",
        "reward.kde.centres=2", "reward.kde.neighbours=2",
        "pruning.round_to=2", "pruning.min_channels=2", "pruning.budget.generator=0.3",
        f"search.rounds={ROUNDS}", "search.checkpoint_every=2", "search.round_timeout_s=300",
        "search.num_evaluators=1",
        "agents.warmup_episodes=1", "agents.batch_size=8", "agents.net_arch=[16,16]",
    ])
    (root / "teacher").mkdir()
    torch.manual_seed(0)
    torch.save(build_generator(cfg).state_dict(), root / "teacher" / "latest_net_G.pth")
    torch.save(build_discriminator(cfg).state_dict(), root / "teacher" / "latest_net_D.pth")
    save_config(cfg, root / "search.yaml")
    return root / "search.yaml"


def _cli(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return subprocess.Popen(
        [sys.executable, "-m", "collabprune.cli", "--no-progress", "search", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own session: the test can reap what the kill leaves behind
    )


def _search_lines(path: Path) -> list[str]:
    """Complete lines of the evaluation log."""
    if not path.is_file():
        return []
    text = path.read_text()
    return text.split("\n")[:-1]


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL, by pid, every process of the search's session (the CLI process first, then its Ray
    daemons and workers, all started by this test), like a crash of the machine running the search."""
    os.kill(proc.pid, signal.SIGKILL)
    for _ in range(3):
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    proc.wait(timeout=30)


def test_search_killed_and_resumed_loses_and_repeats_nothing(tiny_setup: Path, tmp_path: Path, ray_head: RayHead,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    log = run_dir / "evaluations.jsonl"
    proc = _cli(str(tiny_setup), "--out", str(run_dir), "--address", ray_head.gcs_address)
    deadline = time.time() + 240
    while sum(json.loads(x)["round"] >= 0 for x in _search_lines(log)) < KILL_AFTER:
        if proc.poll() is not None:
            pytest.fail(f"search exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.time() > deadline:
            _kill_session(proc)
            pytest.fail("search too slow to reach the kill point")
        time.sleep(0.2)
    _kill_session(proc)  # SIGKILL the search and its embedded Ray at once, mid-run
    before = _search_lines(log)
    assert 2 + KILL_AFTER <= len(before) < 2 + ROUNDS

    resumed = _cli("--resume", str(run_dir), "--address", ray_head.gcs_address)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"{ROUNDS} rounds" in out

    after = _search_lines(log)
    assert [json.loads(x)["round"] for x in after] == list(range(-2, ROUNDS))  # each round exactly once
    assert after[: len(before)] == before  # logged evaluations kept byte for byte
    records = [json.loads(x) for x in after]
    assert {r["digest"] for r in records} == {records[0]["digest"]}
    best = json.loads((run_dir / "best.json").read_text())
    finite = [r for r in records if r["round"] >= 0 and isinstance(r.get("reward"), float)]
    top = sorted(finite, key=lambda r: -r["reward"])[:3]
    # the top 3 by search reward and uniform were re-evaluated with 2 fresh seeds; the best mean won
    contenders = best["reeval"]["candidates"]
    assert [c["round"] for c in contenders] == [-1] + [r["round"] for r in top]
    assert best["reeval"]["reward"] == max(c["reward"] for c in contenders)
    assert (best["round"], best["reeval"]["reward"]) in [(c["round"], c["reward"]) for c in contenders]
    assert (run_dir / "reevaluations.jsonl").read_text().count("\n") == 2 * len(contenders)
    for r in records[2:]:
        assert r["metrics"]["g_macs_fraction"] <= 0.3 + 1e-9 and r["metrics"]["d_macs_fraction"] <= 0.5 + 1e-9

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["resumed"]
    logged_before = {json.loads(x)["round"] for x in before}
    for agent in summary["agents"]:
        assert agent["rounds"] == ROUNDS and agent["start_round"] in (2, 4)
        # rounds logged before the kill and after the agent's checkpoint were replayed, not re-evaluated
        assert agent["replayed"] == sorted(r for r in logged_before if r >= agent["start_round"])
    for role in ("generator", "discriminator"):
        latest = json.loads((run_dir / "checkpoints" / role / "latest.json").read_text())
        assert latest["rounds_done"] == ROUNDS
        assert any((run_dir / "tb" / role).iterdir())
    for name in ("config.yaml", "run.json", "plots/reward.png", "plots/macs.png"):
        assert (run_dir / name).is_file(), name

    # only the uniform candidate's and the top-k candidates' weights are kept
    kept = sorted(p.name for p in (run_dir / "candidates").iterdir())
    assert kept == sorted({"uniform", *(candidate_dir(run_dir, r["round"]).name for r in top)})

    # export the best pair; the rebuilt G is exactly the searched (scored) G
    out = tmp_path / "export"
    export = subprocess.run([sys.executable, "-m", "collabprune.cli", "export", str(run_dir), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    info = json.loads((out / "subnet.json").read_text())
    assert info["round"] == best["round"] and info["metrics"] == best["metrics"]
    assert info["generator"]["macs"] == best["metrics"]["g_macs"]
    assert info["generator"]["macs_published"] >= info["generator"]["macs"]
    assert len(info["teacher"]["generator_sha256"]) == 64 and "torch" in info["versions"]
    assert info["schema_version"] == 2 and info["latency"]["cpu"]["pruned_g_ms"] > 0
    assert info["weights"].startswith("search fine-tuning") and info["reeval"] == best["reeval"]
    g, d = load_subnet(out)
    searched, _ = load_candidate(candidate_dir(run_dir, best["round"]))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), searched(x))
        assert d(torch.cat([x, g(x)], 1)).shape[1] == 1

    # the demo's held-out summary of the finished run: uniform and best get the same final fine-tuning
    # under each final seed, are measured on the test split, and the first seed's pairs are kept
    short_eval_net(monkeypatch)
    held = summarise_run(load_config(tiny_setup, ["finetune.final_steps=2"]), run_dir)
    assert len(held.uniform) == len(held.best) == 2 and held.teacher.steps == 0
    assert held.verdict.best_is_uniform == (best["round"] == -1)
    assert held.samples is not None and held.samples.stat().st_size > 1000
    assert json.loads((run_dir / HELDOUT_DIR / "summary.json").read_text())
    for folder in (FINAL_UNIFORM_DIR, FINAL_DIR):
        final_g, _ = load_candidate(run_dir / folder)
        with torch.no_grad():
            assert final_g(x).shape == x.shape

    # the final student exported as ONNX and int8 (in-process: the shortened evaluation network is
    # the one cached by the summary), with the int8 student's held-out metrics beside fp32's
    if importlib.util.find_spec("onnxruntime") is not None:
        capsys.readouterr()
        assert main(["export", str(run_dir), "--out", str(tmp_path / "export8"), "--int8",
                     "--calibration-images", "8"]) == 0
        printed = capsys.readouterr().out
        info8 = json.loads((tmp_path / "export8" / "subnet.json").read_text())
        int8 = info8["int8"]
        assert info8["weights"].startswith("final fine-tuning") and (tmp_path / "export8" / "generator.int8.onnx").is_file()
        assert int8["calibration_images"] == 8 and int8["int8_ops"].get("Conv", 0) > 0
        assert int8["fp32_ops"].get("ConvTranspose", 0) > 0  # the ResNet's up-sampling stays fp32
        assert int8["heldout_fp32"]["l1"] == pytest.approx(held.best[0].l1, abs=1e-4)  # fp32 ONNX == PyTorch
        assert abs(int8["heldout_int8"]["l1"] - int8["heldout_fp32"]["l1"]) < 0.05
        assert 0 < int8["mean_abs_diff"] <= int8["max_abs_diff"] and int8["latency_ms"]["int8"] > 0
        assert "int8 generator.int8.onnx: test l1 " in printed and "ops run int8: " in printed

    # inspect the finished run: a table per agent and the three kinds of PNG
    plots = tmp_path / "plots"
    shown = subprocess.run([sys.executable, "-m", "collabprune.cli", "inspect", str(run_dir), "--out", str(plots)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "generator agent (ddpg" in shown.stdout and "discriminator agent (ddpg" in shown.stdout
    for name in ("reward.png", "macs.png", "ratios_generator.png", "ratios_discriminator.png"):
        assert (plots / name).stat().st_size > 1000, name
    as_json = subprocess.run([sys.executable, "-m", "collabprune.cli", "inspect", str(run_dir), "--agent", "g",
                              "--json", "--out", str(plots)], cwd=REPO, capture_output=True, text=True, timeout=300)
    report = json.loads(as_json.stdout)
    (agent,) = report["agents"]
    assert agent["role"] == "generator" and agent["checkpoint_round"] == ROUNDS and agent["value_kind"] == "Q"
    groups = agent["groups"]
    assert [g["best_channels"] for g in groups] == best["g_channels"]
    assert all(0.0 < g["policy_ratio"] <= 1.0 and g["spread"] >= 0.0 and -1 <= g["action"] <= 1 for g in groups)
    policy_ratios = [g["policy_ratio"] for g in groups]
    assert ChannelSpace.of("g", build_generator(load_config(tiny_setup), inplace=False), (1, 3, 64, 64),
                           load_config(tiny_setup).pruning).macs_fraction(policy_ratios) <= 0.3 + 1e-9


def _listening_sockets(pids: list[int]) -> list[tuple[str, str, int]]:
    """``(process name, address, port)`` of every listening TCP socket (IPv4 and IPv6) of ``pids``,
    read from ``/proc`` (``ss -ltnp`` without the tool)."""
    import ipaddress

    inodes: dict[str, str] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = name
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))
            found.append((inodes[fields[9]], str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return found


def _is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_local_search_listens_on_loopback_only_and_survives_cpu_load(tiny_setup: Path, tmp_path: Path) -> None:
    """``collabprune search`` with no address starts an embedded Ray (the one test that does: that start
    is what it checks). While two CPU burners keep both cores busy, every listening socket of the search's
    processes (driver, GCS, raylet, agents, workers) is on 127.0.0.1, and the search still finishes."""
    run_dir = tmp_path / "run"
    # load average +2 for the whole search; at the lowest priority, so the test stays short
    burn = "import os\nos.nice(19)\nwhile True: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    proc = _cli(str(tiny_setup), "--out", str(run_dir), "--set", "search.rounds=1", "--set", "search.reeval_top_k=0")
    seen: set[tuple[str, str, int]] = set()
    try:
        deadline = time.time() + 420
        while proc.poll() is None and time.time() < deadline:
            seen.update(_listening_sockets(session_pids(proc.pid)))
            time.sleep(0.5)
        if proc.poll() is None:
            _kill_session(proc)
            pytest.fail("the local search did not finish under load in 420 s")
    finally:
        for b in burners:
            b.kill()
            b.wait()
        for pid in session_pids(proc.pid):  # what a failed run may leave behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, f"too few sockets seen to judge: {sorted(seen)}"
    assert any(n.startswith("ray::") for n in names), sorted(seen)  # the agents' and evaluators' workers
    exposed = sorted(s for s in seen if not _is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 1


def test_multi_budget_search_and_export_per_budget(tiny_setup: Path, tmp_path: Path, ray_head: RayHead) -> None:
    """The real evaluator in a multi-budget search, as a user runs it: ``search.budgets`` gives each
    round one slot per budget; ``collabprune search`` prints each budget's best and how to export
    it; ``collabprune export --budget`` writes that pair (a fraction the run did not search is one
    line and exit 2)."""
    run_dir = tmp_path / "run"
    proc = _cli(str(tiny_setup), "--out", str(run_dir), "--address", ray_head.gcs_address, "--set", "search.rounds=2",
                "--set", "search.budgets=[0.3,0.15]", "--set", "search.reeval_top_k=1")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "(4 evaluations)" in out and "budget 0.15: best" in out, out
    records = [json.loads(x) for x in _search_lines(run_dir / "evaluations.jsonl")]
    assert [(r["round"], r["slot"], r.get("budget")) for r in records] == [
        (-2, 0, None), (-1, 0, 0.3), (-1, 1, 0.15), (0, 0, 0.3), (0, 1, 0.15), (1, 0, 0.3), (1, 1, 0.15)]

    def export(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "collabprune.cli", "export", str(run_dir), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    done = export("--budget", "0.15", "--out", str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr
    subnet = json.loads((tmp_path / "export" / "subnet.json").read_text())
    front = json.loads((run_dir / "front.json").read_text())["best"]
    assert subnet["budget"] == 0.15 and (subnet["round"], subnet["slot"]) == (front[1]["round"], front[1]["slot"])
    assert subnet["metrics"]["g_macs_fraction"] <= 0.15
    bad = export("--budget", "0.2", "--out", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "this run's budgets: 0.3, 0.15" in bad.stderr and bad.stderr.count("\n") == 1
