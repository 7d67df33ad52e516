"""DESIGN.md §1 layering, checked on the source: cli -> agents -> envs -> collabprune core.

- the core (``collabprune``, except ``cli.py``) imports neither ``agents`` nor ``envs``;
- ``envs`` does not import ``agents``;
- no package imports another package's private name (``from agents.driver import _connect``) or a
  private module of it; benchmarks use the public API like any user.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("collabprune", "agents", "envs", "benchmarks")
#: package -> packages it must not import
FORBIDDEN = {"collabprune": ("agents", "envs"), "envs": ("agents",)}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, imported names)`` of every absolute import of a source file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("package", PACKAGES)
def test_layering_and_no_private_imports_across_packages(package: str) -> None:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO)
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN.get(package, ()) and rel != Path("collabprune/cli.py"):
                bad.append(f"{rel}:{line} imports {module} (DESIGN.md §1: {package} must not import {top})")
            if top in PACKAGES and top != package:
                private = [n for n in names if _private(n)] + [p for p in module.split(".")[1:] if _private(p)]
                if private:
                    bad.append(f"{rel}:{line} imports private {private} of {module}")
    assert not bad, "\n".join(bad)


def test_metrics_is_a_leaf_package() -> None:
    """``collabprune.metrics`` (FID, MACs, latency) imports no other part of the core but its base
    modules (config, errors, io): the per-group cost tables live in ``collabprune.pruning.costs``."""
    base = {"collabprune.config", "collabprune.errors", "collabprune.io"}
    bad = [f"{path.relative_to(REPO)}:{line} imports {module}"
           for path in sorted((REPO / "collabprune" / "metrics").rglob("*.py"))
           for line, module, _ in _imports(path)
           if module.startswith("collabprune.") and not module.startswith("collabprune.metrics") and module not in base]
    assert not bad, "\n".join(bad)


def test_models_do_not_import_pruning() -> None:
    """One way between the two: ``collabprune.pruning`` builds on ``collabprune.models`` (networks, the
    sub-network spec); models rebuild an exported sub-network without pruning code."""
    bad = [f"{path.relative_to(REPO)}:{line} imports {module}"
           for path in sorted((REPO / "collabprune" / "models").rglob("*.py"))
           for line, module, _ in _imports(path) if module.startswith("collabprune.pruning")]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The parser finds both kinds of import the rules look at (so a clean result means something)."""
    src = tmp_path / "m.py"
    src.write_text("from agents.driver import _connect\nimport envs.space\n")
    assert _imports(src) == [(1, "agents.driver", ["_connect"]), (2, "envs.space", [])]
