"""Start and stop a private Ray head (with a dashboard, for the Jobs API) for tests.

``start_local_head`` runs ``ray start --head --block`` in its own process session on 127.0.0.1 with
free ports (GCS, dashboard, dashboard agent, runtime-env agent, metrics, Ray client) and its own
short ``--temp-dir``, so it never collides with another Ray instance on the machine. Stopping it
signals only that session (SIGTERM to the ``--block`` process, which shuts its node down), then
SIGKILLs whatever of the session is left: nothing outside it is touched (never the global ``ray``
stop command, which ends every Ray process on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

VENV_BIN = Path(sys.executable).parent


#: The token of the session's Ray head (token authentication, as Ray 2.60 clusters use by default).
RAY_TEST_TOKEN = "collabprune-test-token-0123456789abcdef"


@dataclass(frozen=True)
class RayHead:
    """The session's private Ray head: GCS address (for drivers) and dashboard URL (Jobs API)."""

    gcs_address: str
    dashboard_url: str
    token: str



def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free right now (all held open while they are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A TCP port that is free right now."""
    return free_ports(1)[0]


def session_pids(sid: int) -> list[int]:
    """Process ids of every live process whose session id is ``sid``."""
    out = subprocess.run(["ps", "-eo", "sid=,pid=,stat="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and int(parts[0]) == sid and not parts[2].startswith("Z"):
            pids.append(int(parts[1]))
    return pids


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_ready(url: str, agent: tuple[str, int], proc: subprocess.Popen, timeout_s: float,
                headers: dict[str, str]) -> None:
    """Wait for the dashboard's Jobs API and the head's dashboard agent (which runs the jobs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with code {proc.returncode}")
        try:
            if (requests.get(f"{url}/api/jobs/", headers=headers, timeout=5).status_code == 200
                    and _port_open(*agent)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray dashboard at {url} or its job agent did not come up within {timeout_s:.0f} s")


def start_local_head(
    tmp_dir: str | os.PathLike[str] | None = None,
    num_cpus: int = 2,
    token: str | None = None,
    timeout_s: float = 120.0,
) -> tuple[str, str, Callable[[], None]]:
    """Start a private Ray head on 127.0.0.1 with the dashboard and the Jobs API.

    :param tmp_dir: folder for ``ray_start.log`` (default: the Ray temp dir, which is always a
        fresh short ``/tmp/cpray_*`` folder, removed by ``stop()``: Ray's unix socket paths must
        stay below ~100 characters).
    :param num_cpus: CPUs the head advertises.
    :param token: start with token authentication (``RAY_AUTH_MODE=token``) and this token
        (``RAY_AUTH_TOKEN``); ``None`` starts without authentication (``RAY_AUTH_MODE=disabled``).
    :param timeout_s: how long to wait for the dashboard.
    :returns: ``(gcs_address, dashboard_url, stop)``; ``stop()`` ends every process of the head's
        session and is idempotent; ``stop.session_id`` is that session's id (for ``session_pids``).
    :raises RuntimeError: the head did not come up in time (its processes are stopped first).
    """
    temp = Path(tempfile.mkdtemp(prefix="cpray_", dir="/tmp"))  # short: unix socket paths
    log_dir = Path(tmp_dir) if tmp_dir is not None else temp
    port, dash, agent_port, agent_grpc, env_agent, metrics, client = free_ports(7)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # the jobs' `python`
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    if token is None:
        env["RAY_AUTH_MODE"] = "disabled"
        env.pop("RAY_AUTH_TOKEN", None)
    else:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = token
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={port}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent_port}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--object-store-memory={200 * 1024 * 1024}", f"--temp-dir={temp}",
    ]
    log = open(log_dir / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sid = proc.pid  # start_new_session: the session id is the leader's pid
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 15
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in session_pids(sid):  # stragglers of this session only
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)

    from ray._private.services import get_node_ip_address

    # Ray replaces a loopback --node-ip-address by this machine's address (GCS, agents)
    node_ip = get_node_ip_address()
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_ready(url, (node_ip, agent_port), proc, timeout_s,
                    {"Authorization": f"Bearer {token}"} if token else {})
    except BaseException:
        stop()
        raise
    stop.session_id = sid  # type: ignore[attr-defined]  # for tests that check the teardown
    return f"{node_ip}:{port}", url, stop


__all__ = ["free_port", "free_ports", "session_pids", "start_local_head"]
