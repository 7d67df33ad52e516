"""Per-group MACs table of a network: exact MACs of any keep-ratio assignment without building it.

For the search loop, :func:`group_macs_table` precomputes a per-layer table once (from
:func:`collabprune.metrics.macs.conv_layer_costs`), and :func:`estimate_macs` turns kept-channel
counts per prunable group into exact MACs in microseconds (DESIGN.md §3 conventions: physical, or
published with a ``ConvTranspose2d`` counted on its output grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING, Sequence

import numpy as np
from torch import nn

from collabprune.metrics.macs import conv_layer_costs, example_input

if TYPE_CHECKING:
    from collabprune.pruning.groups import PrunableGroup


@dataclass(frozen=True)
class MacsTable:
    """Precomputed per-layer table: MACs of any kept-channel assignment by two mat-vec products.

    For layer ``l`` and kept counts ``k`` (one per group, network order):
    ``in_l = in_fixed[l] + in_map[l] @ k``, ``out_l = out_fixed[l] + out_map[l] @ k`` and
    ``MACs = sum_l unit[l] * in_l * out_l``. This is exact for groups=1 convolutions (cost is
    bilinear in the channel counts). A layer that no group touches is stored as a constant
    (``unit = its MACs``, ``in_fixed = out_fixed = 1``).

    :param layers: layer names, forward order.
    :param unit: (L,) int64 physical MACs per channel pair.
    :param unit_published: (L,) int64 published-convention MACs per channel pair.
    :param in_fixed: (L,) int64 input channels not belonging to any group.
    :param out_fixed: (L,) int64 output channels not belonging to any group.
    :param in_map: (L, G) int64 1 where group g feeds layer l's input.
    :param out_map: (L, G) int64 1 where group g is layer l's output.
    :param channels: (G,) int64 original channels per group.
    """

    layers: tuple[str, ...]
    unit: np.ndarray
    unit_published: np.ndarray
    in_fixed: np.ndarray
    out_fixed: np.ndarray
    in_map: np.ndarray
    out_map: np.ndarray
    channels: np.ndarray

    @property
    def num_groups(self) -> int:
        """G, the number of prunable groups."""
        return int(self.channels.shape[0])


def group_macs_table(
    model: nn.Module,
    groups: Sequence["PrunableGroup"],
    input_shape: Sequence[int] = (1, 3, 256, 256),
) -> MacsTable:
    """Build the :class:`MacsTable` of ``model`` for its prunable groups.

    :param model: the unpruned network the groups were discovered on.
    :param groups: groups from :func:`collabprune.pruning.groups.discover_groups` (network order;
        only ``out_layers``, ``in_layers`` and ``channels`` are read).
    :param input_shape: (B, C, H, W); the table's MACs are for this input.
    :raises NotImplementedError: a grouped convolution (groups > 1) belongs to a group.
    """
    costs = conv_layer_costs(model, example_input(model, input_shape))
    names = list(costs)
    row = {n: i for i, n in enumerate(names)}
    L, G = len(names), len(groups)
    unit = np.zeros(L, dtype=np.int64)
    unit_pub = np.zeros(L, dtype=np.int64)
    in_fixed = np.zeros(L, dtype=np.int64)
    out_fixed = np.zeros(L, dtype=np.int64)
    in_map = np.zeros((L, G), dtype=np.int64)
    out_map = np.zeros((L, G), dtype=np.int64)
    for i, n in enumerate(names):
        in_fixed[i] = costs[n].in_channels
        out_fixed[i] = costs[n].out_channels
    touched = set()
    for g, grp in enumerate(groups):
        for n in grp.out_layers:
            out_map[row[n], g] += 1
            out_fixed[row[n]] -= grp.channels
            touched.add(n)
        for n, _offset in grp.in_layers:
            in_map[row[n], g] += 1
            in_fixed[row[n]] -= grp.channels
            touched.add(n)
    for i, n in enumerate(names):
        c = costs[n]
        if n in touched:
            if c.groups != 1:
                raise NotImplementedError(f"grouped convolution {n!r} (groups={c.groups}) in a prunable group")
            unit[i], unit_pub[i] = c.unit, c.unit_published
        else:  # constant cost
            unit[i], unit_pub[i] = c.macs, c.macs_published
            in_fixed[i] = out_fixed[i] = 1
    return MacsTable(
        layers=tuple(names),
        unit=unit,
        unit_published=unit_pub,
        in_fixed=in_fixed,
        out_fixed=out_fixed,
        in_map=in_map,
        out_map=out_map,
        channels=np.array([g.channels for g in groups], dtype=np.int64),
    )


def estimate_macs(table: MacsTable, kept: Sequence[int] | np.ndarray, published: bool = False) -> Any:
    """MACs of the sub-network that keeps ``kept[g]`` channels of group ``g`` (no network built).

    Equals :func:`~collabprune.metrics.macs.macs` (or ``macs_published``) of the pruned network exactly, for the input
    shape the table was built with. Runs in a few microseconds. Integer arithmetic throughout, so a
    batch gives each row's count exactly.

    :param table: from :func:`group_macs_table`.
    :param kept: kept channels per group, network order, each in [1, channels]: shape (G,), or
        (M, G) for M candidates at once.
    :param published: use the published (ConvTranspose2d on the output grid) convention.
    :returns: an int for (G,), an (M,) int64 array for (M, G).
    :raises ValueError: wrong length.
    """
    k = np.asarray(kept, dtype=np.int64)
    if k.shape[-1:] != table.channels.shape or k.ndim > 2:
        raise ValueError(f"kept has {k.shape[-1] if k.ndim else 0} entries, the table has {table.num_groups} groups")
    cin = table.in_fixed + k @ table.in_map.T
    cout = table.out_fixed + k @ table.out_map.T
    unit = table.unit_published if published else table.unit
    out = (cin * cout) @ unit
    return int(out) if k.ndim == 1 else out


__all__ = ["MacsTable", "estimate_macs", "group_macs_table"]
