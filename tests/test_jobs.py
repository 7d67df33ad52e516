"""Ray Jobs through the CLI against a private Ray head with token authentication.

The head (``tests/ray_head.py``) runs on 127.0.0.1 with free ports, its own temp dir and
``RAY_AUTH_MODE=token``; the client gets the token through ``RAY_AUTH_TOKEN``. A tiny search job
(64x64 demo crops, a 1-epoch teacher, 2 rounds) runs to SUCCEEDED; its status, logs and run
directory are read through the CLI and the run is exported. A longer job is stopped. Unreachable
addresses and missing/wrong tokens are one-line errors with exit code 2.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from collabprune import jobs
from collabprune.cli import main
from collabprune.config import load_config, save_config
from collabprune.data.demo import build_demo_dataset
from collabprune.errors import JobsError
from collabprune.teacher import train_teacher

from ray_head import RAY_TEST_TOKEN, RayHead, free_port

TOKEN = RAY_TEST_TOKEN
JOB_TIMEOUT_S = 300


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def head(ray_head: RayHead) -> str:
    """The session's Ray head (token auth); its dashboard URL."""
    return ray_head.dashboard_url


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo dataset, a 1-epoch teacher and a 2-round search config; returns the config file."""
    root = tmp_path_factory.mktemp("jobs_setup")
    build_demo_dataset(root / "data", size=64, crops_per_image=2)
    cfg = load_config(None, [
        f"data.root={root / 'data'}", "data.load_size=72", "data.crop_size=64",
        "model.net_g=resnet_6blocks", "model.ngf=8", "model.ndf=8", "model.norm=instance",
        "teacher.n_epochs=1", "teacher.n_epochs_decay=0", f"teacher.checkpoint_dir={root / 'teacher'}",
        "reward.fid.mode=fd_teacher_d", "reward.fid.max_images=8", "reward.kde.centres=2",
        "reward.kde.neighbours=4", "finetune.steps=3", "finetune.device=cpu", "search.rounds=2",
        "agents.warmup_episodes=1", "pruning.round_to=4", "pruning.min_channels=4",
    ])
    train_teacher(cfg, progress=False)
    save_config(cfg, root / "tiny.yaml")
    return root / "tiny.yaml"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client finds the head's token in RAY_AUTH_TOKEN; no RAY_ADDRESS leaks in."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    for var in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------------- real jobs
def test_submit_stop_resume_to_success(head: str, tiny_config: Path, tmp_path: Path, token_env: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A job's whole life: ``submit``, ``jobs stop`` mid-search, ``submit --resume RUN_DIR`` (a new job
    finishes the run, every (round, slot) logged exactly once), then ``jobs status/logs/list`` and an
    export of the run directory the jobs wrote."""
    # enough rounds, each long enough, that the stop lands mid-search (3 rounds of 3 fine-tuning steps
    # once finished before the stop took effect)
    rounds = 6
    storage = tmp_path / "storage"
    t0 = time.monotonic()
    rc, out, err = _cli(capsys, "submit", str(tiny_config), "--address", head, "--storage", str(storage),
                        "--name", "cp-ok", "--set", f"search.rounds={rounds}", "--set", "finetune.steps=12")
    assert rc == 0, err
    run_dir = storage / "cp-ok"
    assert f"run dir: {run_dir}" in out
    log = run_dir / "evaluations.jsonl"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(x.endswith("}") and json.loads(x)["round"] >= 0 for x in (log.read_text().splitlines()
                                                                              if log.is_file() else [])):
        assert jobs.job_status("cp-ok", head)["status"] in ("PENDING", "RUNNING"), jobs.job_logs("cp-ok", head)[-3000:]
        assert time.monotonic() < deadline, "the job logged no search round in time"
        time.sleep(0.2)
    rc, out, err = _cli(capsys, "jobs", "stop", "cp-ok", "--address", head)
    assert rc == 0 and "stop requested" in out, err
    assert jobs.wait_for_job("cp-ok", head, timeout_s=60, poll_s=0.5) == "STOPPED"
    rc, out, _ = _cli(capsys, "jobs", "status", "cp-ok", "--address", head)
    assert rc == 0 and "STOPPED" in out
    rc, out, _ = _cli(capsys, "jobs", "stop", "cp-ok", "--address", head)
    assert rc == 0 and "was not running" in out
    before = [x for x in log.read_text().splitlines() if x.endswith("}")]
    stopped_after = len({json.loads(x)["round"] for x in before if json.loads(x)["round"] >= 0})
    assert stopped_after < rounds

    rc, out, err = _cli(capsys, "submit", "--resume", str(run_dir), "--address", head, "--name", "cp-ok-r")
    assert rc == 0, err
    assert f"run dir: {run_dir}" in out
    status = jobs.wait_for_job("cp-ok-r", head, timeout_s=JOB_TIMEOUT_S, poll_s=1.0)
    elapsed = time.monotonic() - t0
    assert status == "SUCCEEDED", jobs.job_logs("cp-ok-r", head)[-3000:]
    with capsys.disabled():
        print(f"\nsubmit, stop after {stopped_after} of {rounds} rounds, resume -> SUCCEEDED: {elapsed:.1f} s")
    after = log.read_text().splitlines()
    assert after[:len(before)] == before  # what the stopped job logged is kept as it was
    lines = [json.loads(x) for x in after]
    keys = [(r["round"], r["slot"]) for r in lines]
    assert len(keys) == len(set(keys))  # nothing evaluated twice
    # search.num_evaluators: auto (the default) on the 2-CPU head: two evaluators, two pairs per round
    assert sorted(k for k in keys if k[0] >= 0) == [(k, s) for k in range(rounds) for s in (0, 1)]

    rc, out, err = _cli(capsys, "jobs", "status", "cp-ok-r", "--address", head)
    assert rc == 0, err
    assert "SUCCEEDED" in out
    assert f"run dir:  {run_dir}\n" in out
    assert f"rounds:   {rounds} of {rounds} search rounds evaluated" in out
    assert "best:     reward -" in out or "best:     reward " in out

    rc, out, err = _cli(capsys, "jobs", "logs", "cp-ok-r", "--address", head)
    assert rc == 0 and f"search finished: {rounds} rounds" in out
    rc, followed, err = _cli(capsys, "jobs", "logs", "cp-ok-r", "--address", head, "--follow")
    assert rc == 0 and followed == out  # an ended job: --follow prints everything and returns

    rc, out, err = _cli(capsys, "jobs", "list", "--address", head)
    assert rc == 0 and "cp-ok" in out and "cp-ok-r" in out and str(run_dir) in out

    # the run directory the jobs wrote, with the resolved config and a complete export
    assert (run_dir / "best.json").is_file()
    assert load_config(run_dir / "config.yaml").output.run_dir == run_dir
    onnx = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
    rc, out, err = _cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "export"), *(["--onnx"] if onnx else []))
    assert rc == 0, err
    subnet = json.loads((tmp_path / "export" / "subnet.json").read_text())
    assert subnet["generator"]["spec"]["builder"] == "define_G"
    assert (tmp_path / "export" / "generator.pt").is_file()
    if onnx:  # the ONNX export of a searched (resnet_6blocks, instance norm) generator
        assert subnet["onnx"]["max_abs_diff"] < 1e-4
        assert (tmp_path / "export" / "generator.onnx").is_file()


def test_submit_needs_a_config_or_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "submit", "--address", "http://127.0.0.1:1")
    assert rc == 2 and "CONFIG file or --resume" in _one_line_error(err)
    rc, _, err = _cli(capsys, "submit", "--resume", str(tmp_path), "--address", "http://127.0.0.1:1")
    assert rc == 2 and "not a run directory" in _one_line_error(err)


# ------------------------------------------------------------------------------ one-line errors
def _one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("collabprune: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_wrong_token(head: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    rc, _, err = _cli(capsys, "jobs", "list", "--address", head)
    assert rc == 2
    assert "rejected the auth token" in _one_line_error(err)


def test_missing_token(head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    rc, _, err = _cli(capsys, "jobs", "list", "--address", head)
    assert rc == 2
    assert "requires an auth token and none was found" in _one_line_error(err)


def test_unreadable_token_path(head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    rc, _, err = _cli(capsys, "jobs", "list", "--address", head)
    assert rc == 2 and "RAY_AUTH_TOKEN_PATH" in _one_line_error(err)


def test_token_from_file(head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    (tmp_path / "tok").write_text(TOKEN + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    rc, _, err = _cli(capsys, "jobs", "list", "--address", head)
    assert rc == 0, err


def test_unknown_job(head: str, token_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "jobs", "status", "no-such-job", "--address", head)
    assert rc == 2 and "no job 'no-such-job'" in _one_line_error(err)


def test_closed_port_fails_fast(token_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    rc, _, err = _cli(capsys, "jobs", "status", "x", "--address", url)
    assert rc == 2 and time.monotonic() - t0 < 5
    assert f"cannot reach the Ray dashboard at {url}" in _one_line_error(err)
    rc, _, err = _cli(capsys, "submit", "no-such.yaml", "--address", url)
    assert rc == 2  # the config is checked first: a one-line config error
    _one_line_error(err)


def test_silent_server_times_out() -> None:
    """A port that accepts connections but never answers fails after the timeout, not never."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(JobsError, match="cannot reach"):
            jobs.connect(url, timeout_s=1.0)
        assert time.monotonic() - t0 < 4


def test_non_http_address() -> None:
    with pytest.raises(JobsError, match="HTTP address"):
        jobs.resolve_address("ray://head:10001")
    assert jobs.resolve_address("head:8265/") == "http://head:8265"


# ------------------------------------------------------------------------------------ no network
class _OpenDashboard(BaseHTTPRequestHandler):
    """A fake dashboard without auth that records the headers it receives."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append(dict(self.headers))
        body = json.dumps({"authentication_mode": "disabled"} if self.path == "/api/authentication_mode"
                          else {"ray_version": "2.60.0"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_token_not_sent_to_a_cluster_without_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    server = HTTPServer(("127.0.0.1", 0), _OpenDashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        headers = jobs._auth_headers(f"http://127.0.0.1:{server.server_port}", 2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert headers == {}
    assert all("secret" not in json.dumps(h) for h in _OpenDashboard.seen)


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert jobs.resolve_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.resolve_token() == "from-home"
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert jobs.resolve_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.resolve_token() == "from-env"


def test_progress_and_status_text(tmp_path: Path) -> None:
    run = tmp_path / "run"
    details = {"job_id": "j", "status": "RUNNING", "message": "", "run_dir": str(run),
               "progress": jobs.read_progress(run)}
    assert "(not visible from here)" in jobs.format_status(details)
    run.mkdir()
    records = [{"round": -2}, {"round": -1}, {"round": 0}, {"round": 1}]
    (run / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"round": 2, "rew')
    (run / "best.json").write_text(json.dumps({"round": 1, "reward": -2.5}))
    (run / "config.yaml").write_text("search: {rounds: 5}\n")
    progress = jobs.read_progress(run)
    assert progress == {"visible": True, "rounds_done": 2, "last_round": 1, "rounds_total": 5,
                        "best_reward": -2.5, "best_round": 1}
    text = jobs.format_status({**details, "progress": progress})
    assert "rounds:   2 of 5 search rounds evaluated (last round 1)" in text
    assert "best:     reward -2.5000 (round 1)" in text


def test_job_config_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.root=data/x", "teacher.checkpoint_dir=/abs/teacher"])
    out = jobs.job_config(cfg, Path("/shared/runs/j1"))
    assert out.data.root == (tmp_path / "data" / "x").resolve()
    assert out.teacher.checkpoint_dir == Path("/abs/teacher")
    assert out.output.run_dir == Path("/shared/runs/j1")
    assert cfg.data.root == Path("data/x")  # the caller's config is untouched
