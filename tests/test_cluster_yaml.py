"""ray_cluster.yaml: valid for Ray's own cluster-launcher schema, GPU workers, dashboard on 127.0.0.1,
setup installs this project, token auth on every node."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("jsonschema")  # Ray's validate_config needs it

from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` sees it: merged with the provider's defaults.yaml, then validated."""
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)  # Ray's JSON schema (ray/autoscaler/ray-schema.json) + cross-field checks
    return cfg


def _commands(cfg: dict[str, Any], key: str) -> str:
    return "\n".join(cfg.get(key) or [])


def test_valid_for_ray(prepared: dict[str, Any], raw: dict[str, Any]) -> None:
    assert prepared["cluster_name"] == raw["cluster_name"] == "collabprune"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_rejects_a_typo(raw: dict[str, Any]) -> None:
    """The validation is real: an unknown top-level field fails Ray's schema."""
    import jsonschema

    bad = prepare_config(copy.deepcopy(raw))
    bad["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


def test_cpu_head_and_gpu_workers(prepared: dict[str, Any]) -> None:
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU", 0) >= 2
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    gpu_workers = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "at least one worker node type with resources: {GPU: 1}"
    for t in gpu_workers.values():
        assert t["resources"]["GPU"] == 1
        assert 1 <= t["min_workers"] <= t["max_workers"] <= prepared["max_workers"]


def test_dashboard_on_loopback_only(prepared: dict[str, Any]) -> None:
    head = _commands(prepared, "head_start_ray_commands")
    assert re.search(r"ray start --head\b", head)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    workers = _commands(prepared, "worker_start_ray_commands")
    assert "--address=$RAY_HEAD_IP:6379" in workers


def test_token_auth_on_every_node(prepared: dict[str, Any]) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in _commands(prepared, key)
    assert "~/.ray/auth_token" in prepared["file_mounts"]


def test_setup_installs_this_project(prepared: dict[str, Any]) -> None:
    setup = _commands(prepared, "setup_commands")
    assert re.search(r"pip install .*collabprune", setup)
    # the synced checkout that pip installs is this repository
    assert prepared["file_mounts"].get("~/collabprune") == "."
    assert (CLUSTER_YAML.parent / "pyproject.toml").is_file()
    assert 'name = "collabprune"' in (CLUSTER_YAML.parent / "pyproject.toml").read_text()
