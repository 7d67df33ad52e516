"""Ray Jobs client: submit a search to a Ray cluster, then status / logs / stop / list (DESIGN.md §6).

``collabprune submit CONFIG --address http://HEAD:8265 [--storage PATH]`` validates the config here,
writes the resolved config (overrides applied, ``output.run_dir`` set to ``STORAGE/JOB_ID``) into a
temporary ``working_dir``, and submits the entrypoint
``python -m collabprune.cli --no-progress search config.yaml --out STORAGE/JOB_ID`` through the Ray
Jobs API. The runtime env also ships this distribution's import packages (``collabprune``, ``envs``,
``agents``) as ``py_modules``, so the cluster's nodes need the dependencies (torch, Ray, SB3, ...) but
not this package, and the job always runs the client's version of the code. Relative data/teacher
paths in the config are made absolute against the client's working directory: the cluster must see
them at those paths (a shared filesystem), as it must see the storage path.

The run directory is recorded in the job's metadata (``collabprune.run_dir``), so
:func:`job_status` finds it: it shows the job state and, when the run directory is visible from the
client, the search rounds done (``evaluations.jsonl``, rounds >= 0) and the best reward
(``best.json``).

Token authentication (Ray >= 2.52; on by default for local clusters from Ray 2.59): the dashboard
says whether it wants a token (``GET /api/authentication_mode``, a public endpoint). The token is
read as Ray reads it: ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``, and sent as ``Authorization: Bearer ...`` (Ray's own client only sends it when
``RAY_AUTH_MODE=token`` is set in the client's environment). A token is never sent to a cluster that
does not ask for one. Every failure (unreachable address, missing or rejected token, unknown job)
is a one-line :class:`~collabprune.errors.JobsError`; an unreachable address fails within
``timeout_s`` seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from collabprune.config import RunConfig, load_config, save_config
from collabprune.errors import JobsError
from collabprune.records import EvaluationRecord

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: seconds to wait for the dashboard to answer before the address counts as unreachable
DEFAULT_TIMEOUT_S = 5.0
#: import packages of the distribution, shipped as ``py_modules``
PACKAGES: tuple[str, ...] = ("collabprune", "envs", "agents")
#: how long ``submit`` retries while a freshly started head has no job agent yet
AGENT_WAIT_S = 60.0
CONFIG_NAME = "config.yaml"
META_RUN_DIR = "collabprune.run_dir"
META_CONFIG = "collabprune.config"
META_ROUNDS = "collabprune.rounds"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info"]
_AUTH_HINT = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, or copy it to "
              "~/.ray/auth_token; on the head node `ray get-auth-token` prints it")


# ------------------------------------------------------------------------------------ connection
def resolve_address(address: str | None) -> str:
    """The dashboard URL to talk to.

    :param address: ``http(s)://HOST:PORT`` or ``HOST:PORT``; ``None``: ``RAY_API_SERVER_ADDRESS``,
        else an ``http(s)://`` ``RAY_ADDRESS``, else :data:`DEFAULT_ADDRESS`.
    :returns: the URL without a trailing slash.
    :raises JobsError: a ``ray://`` or other non-HTTP address.
    """
    if address is None:
        env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or ""
        address = env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise JobsError(f"--address {address}: the Jobs API needs the dashboard's HTTP address",
                        hint="use http://HEAD:8265 (e.g. through `ssh -L 8265:localhost:8265 HEAD`)")
    return address


def resolve_token() -> str | None:
    """The Ray auth token, from where Ray reads it, or ``None``.

    Order: ``RAY_AUTH_TOKEN``; the file named by ``RAY_AUTH_TOKEN_PATH``; ``~/.ray/auth_token``.

    :raises JobsError: ``RAY_AUTH_TOKEN_PATH`` is set but names an unreadable or empty file.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        try:
            token = Path(path_env).expanduser().read_text().strip()
        except OSError as err:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path_env}: cannot read the token ({err.strerror})") from None
        if not token:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path_env}: the token file is empty")
        return token
    default = Path.home() / ".ray" / "auth_token"
    try:
        return default.read_text().strip() or None
    except OSError:
        return None


def _unreachable(url: str, err: BaseException | None = None) -> JobsError:
    why = f" ({type(err).__name__})" if err is not None else ""
    return JobsError(f"cannot reach the Ray dashboard at {url}{why}",
                     hint="is the cluster up and the address right? For a remote head use "
                          "`ray dashboard ray_cluster.yaml` or `ssh -L 8265:localhost:8265 HEAD`")


def _auth_headers(url: str, timeout_s: float) -> dict[str, str]:
    """Headers for ``url``: a bearer token when the dashboard wants one (checked with a request).

    :raises JobsError: unreachable within ``timeout_s``, not a Ray dashboard, no token, wrong token.
    """
    import requests

    def get(path: str, headers: dict[str, str]) -> Any:
        try:
            return requests.get(url + path, headers=headers, timeout=(timeout_s, timeout_s))
        except requests.RequestException as err:
            raise _unreachable(url, err) from None

    r = get("/api/authentication_mode", {})
    mode = "unknown"  # older Ray: no such endpoint
    if r.status_code == 200:
        try:
            mode = str(r.json().get("authentication_mode", "unknown"))
        except ValueError:
            raise JobsError(f"{url} is not a Ray dashboard (GET /api/authentication_mode is not JSON)") from None
    if mode == "disabled":
        return {}
    token = resolve_token()
    if token is None:
        if mode == "token":
            raise JobsError(f"the Ray cluster at {url} requires an auth token and none was found", hint=_AUTH_HINT)
        return {}
    headers = {"Authorization": f"Bearer {token}"}
    r = get("/api/version", headers)
    if r.status_code in (401, 403):
        raise JobsError(f"the Ray cluster at {url} rejected the auth token (HTTP {r.status_code})", hint=_AUTH_HINT)
    if r.status_code != 200:
        raise JobsError(f"{url}: GET /api/version answered HTTP {r.status_code}; is this a Ray dashboard?")
    return headers


@contextlib.contextmanager
def _no_address_env() -> Iterator[None]:
    """Hide ``RAY_ADDRESS``/``RAY_API_SERVER_ADDRESS``: Ray's client lets them override its argument."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _errors(url: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs SDK's exceptions into one-line :class:`JobsError`."""
    import requests

    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # Ray < 2.52: no token authentication

        class AuthenticationError(Exception):  # type: ignore[no-redef]
            pass

    try:
        yield
    except JobsError:
        raise
    except AuthenticationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "authentication failed"
        raise JobsError(f"{url}: {first}", hint=_AUTH_HINT) from None
    except (requests.RequestException, ConnectionError) as err:
        raise _unreachable(url, err) from None
    except RuntimeError as err:
        text = " ".join(str(err).split())
        if job_id is not None and ("404" in text or "does not exist" in text):
            raise JobsError(f"no job {job_id!r} on {url}", hint="`collabprune jobs list` shows the jobs") from None
        raise JobsError(f"{url}: {text[:300]}") from None


def connect(address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """A ``ray.job_submission.JobSubmissionClient`` for the cluster at ``address``.

    :param address: the dashboard address (see :func:`resolve_address`).
    :param timeout_s: connect/read timeout of the reachability and token checks.
    :returns: the client, with the auth header set when the cluster needs one.
    :raises JobsError: Ray's Jobs SDK is not installed, the address is unreachable, the token is
        missing or rejected.
    """
    url = resolve_address(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise JobsError("the Ray Jobs client is not installed", hint="pip install 'ray[default]'") from None
    headers = _auth_headers(url, timeout_s)
    with _errors(url), _no_address_env():
        return JobSubmissionClient(url, headers=headers)


# ------------------------------------------------------------------------------------ submission
def _absolute(path: Path | None) -> Path | None:
    return None if path is None else (path if path.is_absolute() else (Path.cwd() / path).resolve())


def _package_dirs(packages: Sequence[str]) -> list[str]:
    """Source folders of ``packages`` (found, not imported)."""
    dirs = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise JobsError(f"cannot ship package {name!r}: it is not importable here",
                            hint="run collabprune submit from an installed collabprune (pip install -e .)")
        dirs.append(str(Path(list(spec.submodule_search_locations)[0]).resolve()))
    return dirs


def default_job_id(config: str | os.PathLike[str] | None) -> str:
    """``collabprune-<config stem>-<YYYYmmdd-HHMMSS>-<4 hex>``: the submission id and run-dir name."""
    stem = Path(config).stem if config is not None else "demo"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "run"
    return f"collabprune-{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def job_config(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """The config the job runs: paths made absolute (client cwd) and ``output.run_dir = run_dir``."""
    data = cfg.model_copy(deep=True)
    data.data.root = _absolute(data.data.root)
    data.teacher.checkpoint_dir = _absolute(data.teacher.checkpoint_dir)
    data.reward.fid.weights = _absolute(data.reward.fid.weights)
    data.pruning.latency_model = _absolute(data.pruning.latency_model)
    data.output.run_dir = run_dir
    return data


@contextlib.contextmanager
def _quiet_packaging() -> Iterator[None]:
    """No "Creating a file package ..." / "Uploading package ..." INFO lines from Ray's SDK."""
    loggers = [logging.getLogger(n) for n in ("ray.dashboard.modules.dashboard_sdk",
                                              "ray._private.runtime_env.packaging")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def submit(
    config: str | os.PathLike[str] | None,
    address: str | None = None,
    storage: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    job_id: str | None = None,
    ship_code: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    resume: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Submit a search as a Ray job, or continue a stopped or killed one.

    :param config: the run config YAML (``None``: the defaults); validated here first. Ignored with
        ``resume`` (the run directory's own ``config.yaml`` is used).
    :param address: the dashboard address (see :func:`resolve_address`).
    :param storage: folder on a filesystem the cluster shares; the run directory is
        ``storage/job_id``. Default: ``COLLABPRUNE_STORAGE``, else the (absolute) parent of the
        config's ``output.run_dir``.
    :param overrides: ``key.sub=value`` config overrides.
    :param job_id: submission id and run-dir name (default :func:`default_job_id`).
    :param ship_code: ship :data:`PACKAGES` as ``py_modules`` (``False``: use the cluster's installed
        collabprune).
    :param timeout_s: connection timeout.
    :param resume: a run directory on the shared storage (a job that was stopped or died): the new job
        runs ``collabprune search --resume`` on it, which evaluates only the rounds not yet logged.
        Default job id ``<run dir name>-resume-<YYYYmmdd-HHMMSS>``.
    :returns: ``{"job_id", "run_dir", "address"}``.
    :raises ConfigError: the config or an override is invalid.
    :raises RunDirError: ``resume`` is not a run directory.
    :raises JobsError: the cluster cannot be reached, the token is missing/wrong, the submission fails.
    """
    if resume is not None:
        from collabprune.runs import CONFIG_FILE, resume_config

        run_dir = _absolute(Path(resume))
        cfg = resume_config(run_dir, list(overrides))
        job_id = job_id or f"{run_dir.name}-resume-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        cfg = load_config(config, list(overrides))
        if storage is None:
            storage = os.environ.get("COLLABPRUNE_STORAGE") or _absolute(cfg.output.run_dir).parent
        job_id = job_id or default_job_id(config)
        run_dir = _absolute(Path(storage)) / job_id
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", job_id):
        raise JobsError(f"job id {job_id!r}: use letters, digits, '-', '_' and '.' only")
    client = connect(address, timeout_s)
    url = resolve_address(address)
    runtime_env: dict[str, Any] = {
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"},
        "excludes": list(_EXCLUDES),
    }
    if ship_code:
        runtime_env["py_modules"] = _package_dirs(PACKAGES)
    search = ["--resume", shlex.quote(str(run_dir)), *(f"--set {shlex.quote(o)}" for o in overrides)] \
        if resume is not None else [CONFIG_NAME, "--out", shlex.quote(str(run_dir))]
    entrypoint = " ".join(["python", "-m", "collabprune.cli", "--no-progress", "search", *search])
    metadata = {META_RUN_DIR: str(run_dir), META_ROUNDS: str(cfg.search.rounds),
                META_CONFIG: str(run_dir / CONFIG_FILE) if resume is not None else str(config or "<defaults>")}
    with tempfile.TemporaryDirectory(prefix="collabprune_job_") as tmp:
        if resume is None:
            save_config(job_config(cfg, run_dir), Path(tmp) / CONFIG_NAME)
        runtime_env["working_dir"] = tmp
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                with _quiet_packaging(), _errors(url):
                    submitted = client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                                  runtime_env=runtime_env, metadata=metadata)
                break
            except JobsError as err:
                # a head that just started (e.g. right after `ray up`) has no job agent yet
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2.0)
    return {"job_id": submitted, "run_dir": str(run_dir), "address": url}


# --------------------------------------------------------------------------------- status & co.
def read_progress(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Progress of a run directory as seen from here.

    :param run_dir: the run directory.
    :returns: ``{"visible": False}`` when the folder cannot be seen; else ``{"visible": True,
        "rounds_done": distinct search rounds (>= 0) in evaluations.jsonl, "last_round": the
        highest or None, "rounds_total": search.rounds of its config.yaml or None, "best_reward",
        "best_round" (None before the first best.json)}``. A torn last log line is skipped.
    """
    path = Path(run_dir)
    if not path.is_dir():
        return {"visible": False}
    rounds: set[int] = set()
    log = path / "evaluations.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                r = EvaluationRecord.from_dict(json.loads(line)).round
            except (ValueError, AttributeError, TypeError):
                continue
            if isinstance(r, int) and r >= 0:
                rounds.add(r)
    total = None
    try:
        total = int(yaml.safe_load((path / CONFIG_NAME).read_text())["search"]["rounds"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        pass
    best_reward = best_round = None
    try:
        best = EvaluationRecord.from_dict(json.loads((path / "best.json").read_text()))
        best_reward, best_round = best.reward, best.round
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return {"visible": True, "rounds_done": len(rounds), "last_round": max(rounds) if rounds else None,
            "rounds_total": total, "best_reward": best_reward, "best_round": best_round}


def _details(info: Any) -> dict[str, Any]:
    meta = dict(info.metadata or {})
    return {
        "job_id": info.submission_id or info.job_id,
        "status": str(info.status),
        "message": info.message or "",
        "start_time": info.start_time,
        "end_time": info.end_time,
        "entrypoint": info.entrypoint,
        "run_dir": meta.get(META_RUN_DIR),
        "config": meta.get(META_CONFIG),
        "rounds_total": int(meta[META_ROUNDS]) if str(meta.get(META_ROUNDS, "")).isdigit() else None,
    }


def job_status(job_id: str, address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """State of a job and, when its run directory is visible from here, its search progress.

    :param job_id: the submission id (or Ray job id).
    :param address: the dashboard address.
    :param timeout_s: connection timeout.
    :returns: the job's details (``job_id``, ``status``, ``message``, ``run_dir``, ...) and
        ``progress`` (see :func:`read_progress`; ``None`` for a job without a run directory).
    :raises JobsError: unreachable, token problems, or no such job.
    """
    client = connect(address, timeout_s)
    url = resolve_address(address)
    with _errors(url, job_id):
        info = client.get_job_info(job_id)
    details = _details(info)
    details["progress"] = read_progress(details["run_dir"]) if details["run_dir"] else None
    if details["progress"] and details["progress"].get("rounds_total") is None:
        details["progress"]["rounds_total"] = details["rounds_total"]
    return details


def format_status(details: dict[str, Any]) -> str:
    """Human-readable lines for :func:`job_status`'s result."""
    lines = [f"job:      {details['job_id']}",
             f"status:   {details['status']}" + (f" ({details['message']})" if details["message"] else "")]
    run_dir, progress = details.get("run_dir"), details.get("progress")
    if run_dir is None:
        lines.append("run dir:  - (not a collabprune job)")
        return "\n".join(lines)
    if not progress or not progress.get("visible"):
        lines.append(f"run dir:  {run_dir} (not visible from here)")
        return "\n".join(lines)
    lines.append(f"run dir:  {run_dir}")
    total = progress.get("rounds_total")
    last = progress.get("last_round")
    lines.append(f"rounds:   {progress['rounds_done']}" + (f" of {total}" if total is not None else "")
                 + " search rounds evaluated" + (f" (last round {last})" if last is not None else ""))
    if progress.get("best_reward") is None:
        lines.append("best:     - (no best pair yet)")
    else:
        lines.append(f"best:     reward {progress['best_reward']:.4f} (round {progress['best_round']})")
    return "\n".join(lines)


def job_logs(job_id: str, address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """All logs of a job so far (the entrypoint's stdout and stderr).

    :raises JobsError: unreachable, token problems, or no such job.
    """
    client = connect(address, timeout_s)
    with _errors(resolve_address(address), job_id):
        return client.get_job_logs(job_id)


def follow_logs(job_id: str, address: str | None = None, poll_s: float = 2.0,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[str]:
    """Yield new log text of a job until it reaches a terminal state (polling).

    :raises JobsError: unreachable, token problems, or no such job.
    """
    client = connect(address, timeout_s)
    url = resolve_address(address)
    seen = 0
    while True:
        with _errors(url, job_id):
            status = str(client.get_job_status(job_id))
            text = client.get_job_logs(job_id)
        if len(text) > seen:
            yield text[seen:]
            seen = len(text)
        if status in TERMINAL:
            return
        time.sleep(poll_s)


def stop_job(job_id: str, address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Ask Ray to stop a job (SIGTERM to the entrypoint, then SIGKILL after Ray's grace period).

    :returns: ``True`` if the job was running (it becomes STOPPED), ``False`` if it had ended.
    :raises JobsError: unreachable, token problems, or no such job.
    """
    client = connect(address, timeout_s)
    with _errors(resolve_address(address), job_id):
        return bool(client.stop_job(job_id))


def list_jobs(address: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Every job of the cluster, oldest first (see :func:`job_status` for the fields, no progress).

    :raises JobsError: unreachable or token problems.
    """
    client = connect(address, timeout_s)
    with _errors(resolve_address(address)):
        jobs = [_details(info) for info in client.list_jobs()]
    return sorted(jobs, key=lambda d: d["start_time"] or 0)


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """A table of :func:`list_jobs`'s result."""
    if not jobs:
        return "no jobs"
    rows = [("JOB", "STATUS", "STARTED", "RUN DIR")]
    for d in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["start_time"] / 1e3)) if d["start_time"] else "-"
        rows.append((str(d["job_id"]), d["status"], started, d["run_dir"] or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


def wait_for_job(job_id: str, address: str | None = None, timeout_s: float = 3600.0, poll_s: float = 2.0) -> str:
    """Poll a job until it is SUCCEEDED, FAILED or STOPPED.

    :param timeout_s: the longest wait.
    :returns: the terminal status.
    :raises JobsError: unreachable, token problems, no such job, or still running after ``timeout_s``.
    """
    client = connect(address)
    url = resolve_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        with _errors(url, job_id):
            status = str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise JobsError(f"job {job_id} is still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_TIMEOUT_S", "PACKAGES", "connect", "default_job_id", "follow_logs",
    "format_jobs", "format_status", "job_config", "job_logs", "job_status", "list_jobs", "read_progress",
    "resolve_address", "resolve_token", "stop_job", "submit", "wait_for_job",
]
