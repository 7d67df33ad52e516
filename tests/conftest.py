"""Shared pytest fixtures.

- ``isolated_env`` (session, autouse): TORCH_HOME and MPLCONFIGDIR point into a session temp dir, so
  tests never read or write the user's caches.
- ``ray_session`` (session): ONE embedded Ray instance (2 CPUs, no dashboard) for every test that
  needs Ray; started on first use, shut down at the end of the session. Tests never call
  ``ray.init``/``ray.shutdown`` themselves and kill only the actors they start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


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
def ray_session(isolated_env: Path) -> Iterator[None]:
    """One embedded Ray instance for the whole test session (``address="local"``: never an
    existing cluster on this machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()
