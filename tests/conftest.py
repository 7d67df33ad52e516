"""Shared pytest fixtures.

- ``isolated_env`` (session, autouse): TORCH_HOME and MPLCONFIGDIR point into a session temp dir, so
  tests never read or write the user's caches.
- ``ray_head`` (session): ONE private Ray head for the whole test session, started on first use:
  127.0.0.1 only, free ports, 2 CPUs, token authentication, dashboard and Jobs API. Its processes
  are stopped (by their session, never with the global ``ray`` stop command) at the end.
- ``ray_session`` (session): this test process connected to that head as a driver. Tests never call
  ``ray.init``/``ray.shutdown`` themselves and kill only the actors they start; subprocesses (the
  CLI) reach the same head with ``--address`` and the token in their environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from ray_head import RAY_TEST_TOKEN, RayHead, session_pids, start_local_head

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# Drivers in this process and in its subprocesses (the CLI) authenticate to the session's Ray head.
# Set before anything imports Ray: Ray reads the token once.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = RAY_TEST_TOKEN
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Per-session TORCH_HOME and MPLCONFIGDIR (restored afterwards)."""
    root = tmp_path_factory.mktemp("env")
    saved = {k: os.environ.get(k) for k in ("TORCH_HOME", "MPLCONFIGDIR")}
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["MPLCONFIGDIR"] = str(root / "mpl")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """Start the one Ray head of the test session; stop every process it started afterwards."""
    gcs, url, stop = start_local_head(tmp_path_factory.mktemp("ray_head"), num_cpus=2, token=RAY_TEST_TOKEN)
    try:
        yield RayHead(gcs, url, RAY_TEST_TOKEN)
    finally:
        stop()
        assert session_pids(stop.session_id) == [], "the Ray head left processes behind"


@pytest.fixture(scope="session")
def ray_session(ray_head: RayHead) -> Iterator[RayHead]:
    """This test process as a driver of the session's Ray head."""
    import ray

    ray.init(address=ray_head.gcs_address, log_to_driver=False)
    yield ray_head
    ray.shutdown()
