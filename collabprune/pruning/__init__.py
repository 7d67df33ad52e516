"""Channel space (prunable groups), ratios -> physical sub-network, sub-network specs (DESIGN.md §3).

Names are imported lazily, so that ``collabprune.pruning.spec`` (plain data, used to rebuild
exported networks) can be imported without torch-pruning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PrunableGroup": "collabprune.pruning.groups",
    "ChannelTrace": "collabprune.pruning.groups",
    "discover_groups": "collabprune.pruning.groups",
    "trace_groups": "collabprune.pruning.groups",
    "kept_channels": "collabprune.pruning.prune",
    "prune_model": "collabprune.pruning.prune",
    "select_channels": "collabprune.pruning.prune",
    "SubnetSpec": "collabprune.pruning.spec",
    "infer_builder": "collabprune.pruning.spec",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'collabprune.pruning' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
