"""A measured latency model of one network's sub-networks, for latency budgets.

NetAdapt (Yang et al., ECCV 2018) and AMC (He et al., ECCV 2018) budget a pruned network by latency
measured on the target; NetAdapt does it with per-layer look-up tables. Here the table is a linear
model over the quantities a channel-pruned sub-network changes, fitted to whole sub-networks timed
on the backend, so it includes what per-layer tables miss (normalisation, activations, concatenation,
framework overhead):

    predicted_ms(k) = c_0 + sum_j c_j * MACs_j(k) / MACs_j(teacher) + c_act * act(k) / act(teacher)

where ``k`` is the kept channels per prunable group, ``MACs_j`` the physical MACs of the convolutions
whose output has the j-th feature-map size (from the exact :class:`~collabprune.pruning.costs.MacsTable`:
on a CPU a MAC at 4x4 is slower than a MAC at 128x128), ``act`` the elements every convolution
writes (memory traffic of the layers after it), and every ``c >= 0`` (non-negative least squares), so
the prediction never falls when a group keeps more channels: the budget projection's bisection and
fill stay exact. The fit uses ``samples`` sub-networks: the teacher, uniform candidates from 0.9
down to ``max(r_min, 0.05)`` and random allocations around them, each pruned physically
(:func:`~collabprune.pruning.prune.prune_model`) and timed (:func:`~collabprune.backends.backend_latency_s`).

A model is measured once per run, on the machine that starts the search, and kept in
``RUN_DIR/latency_model.json`` with the machine's description (``pruning.latency_model`` points at it).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from collabprune.backends import backend_latency_s, machine_info
from collabprune.config import PruningConfig
from collabprune.errors import ConfigError
from collabprune.io import atomic_write_json
from collabprune.metrics.macs import conv_layer_costs, example_input
from collabprune.pruning.costs import MacsTable


@dataclass(frozen=True)
class LatencyModel:
    """Predicted latency (ms) of a network's sub-networks from their kept channels (module docstring).

    :param backend: ``torch-cpu`` | ``onnxruntime-cpu`` | ``torch-cuda``.
    :param batch: B of the timed input.
    :param input_shape: (B, C, H, W) timed.
    :param layers: the convolution names of the :class:`MacsTable` it was fitted on (forward order).
    :param channels: (G,) the unpruned channels of each prunable group it was fitted on.
    :param layer_level: (L,) index of each layer's output feature-map size (0 = the largest).
    :param layer_act: (L,) output elements per output channel of each layer (B * H * W).
    :param scale: (F,) the teacher's value of each feature (they are normalised by it).
    :param coef_ms: (F + 1,) ``c_0`` then the non-negative coefficient of each feature, ms.
    :param teacher_ms: the teacher's measured latency, ms.
    :param fit_samples: sub-networks timed for the fit.
    :param fit_error_pct: mean |predicted - measured| / measured over the fit samples, percent.
    :param machine: where it was measured (CPU model, cores, platform, torch, device).
    """

    backend: str
    batch: int
    input_shape: tuple[int, ...]
    layers: tuple[str, ...]
    channels: tuple[int, ...]
    layer_level: tuple[int, ...]
    layer_act: tuple[int, ...]
    scale: tuple[float, ...]
    coef_ms: tuple[float, ...]
    teacher_ms: float
    fit_samples: int
    fit_error_pct: float
    machine: dict[str, Any]

    @property
    def teacher_predicted_ms(self) -> float:
        """The model's prediction for the unpruned network (the denominator of a latency budget's fraction)."""
        return float(self.coef_ms[0] + sum(self.coef_ms[1:]))  # every feature is 1 at the teacher

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyModel":
        """Inverse of :meth:`to_dict`."""
        tuples = ("input_shape", "layers", "channels", "layer_level", "layer_act", "scale", "coef_ms")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})

    def save(self, path: Path) -> None:
        """Write it as JSON (temporary name, then renamed)."""
        atomic_write_json(path, self.to_dict())

    def predict_ms(self, table: MacsTable, kept: Sequence[int] | np.ndarray) -> Any:
        """Predicted latency, ms, of the sub-network keeping ``kept`` channels per group.

        :param table: the MACs table of the same network (same layers).
        :param kept: (G,) or (M, G) kept channels.
        :returns: a float for (G,), an (M,) array for (M, G).
        """
        feats = features(table, np.asarray(kept, dtype=np.int64), self.layer_level, self.layer_act)
        out = self.coef_ms[0] + (feats / np.asarray(self.scale)) @ np.asarray(self.coef_ms[1:])
        return float(out) if np.ndim(out) == 0 else out

    def check_table(self, table: MacsTable, input_shape: Sequence[int], where: str) -> None:
        """:raises ConfigError: the model was fitted on another network: other convolutions, group
        widths or input (C, H, W)."""
        same = (tuple(table.layers) == tuple(self.layers) and tuple(int(c) for c in table.channels) == self.channels
                and tuple(int(s) for s in input_shape[1:]) == tuple(self.input_shape[1:]))
        if not same:
            raise ConfigError(f"{where}: the latency model was measured on another network ({len(self.layers)} "
                              f"convolutions, input {list(self.input_shape[1:])}; this one: {len(table.layers)}, "
                              f"{list(input_shape[1:])}); remove it to measure again")


def features(table: MacsTable, kept: np.ndarray, layer_level: Sequence[int], layer_act: Sequence[int]) -> np.ndarray:
    """The model's features of kept-channel vectors: MACs per feature-map size, then written elements.

    :param table: the network's MACs table.
    :param kept: (G,) or (M, G) int64.
    :param layer_level: (L,) level index of each layer.
    :param layer_act: (L,) output elements per output channel of each layer.
    :returns: (F,) or (M, F) float64, F = number of levels + 1.
    """
    cin = table.in_fixed + kept @ table.in_map.T
    cout = table.out_fixed + kept @ table.out_map.T
    per_layer = (cin * cout * table.unit).astype(np.float64)  # (.., L) physical MACs of each layer
    levels = int(max(layer_level)) + 1
    onehot = np.zeros((len(layer_level), levels))
    onehot[np.arange(len(layer_level)), list(layer_level)] = 1.0
    act = (cout * np.asarray(layer_act)).astype(np.float64)
    return np.concatenate([per_layer @ onehot, act.sum(axis=-1, keepdims=True)], axis=-1)


def layer_geometry(model: nn.Module, table: MacsTable, input_shape: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(layer_level, layer_act)`` of the table's layers: the index of each output feature-map size
    (largest first) and B * H * W of each output."""
    costs = conv_layer_costs(model, example_input(model, input_shape))
    hws = [costs[n].out_hw for n in table.layers]
    order = sorted(set(hws), key=lambda hw: -hw[0] * hw[1])
    batch = int(input_shape[0])
    return [order.index(hw) for hw in hws], [batch * hw[0] * hw[1] for hw in hws]


def sample_allocations(channels: Sequence[int], cfg: PruningConfig, samples: int, seed: int) -> list[list[float]]:
    """Keep-ratio vectors to time: the teacher (all 1), uniform ratios from 0.9 down to ``max(r_min, 0.05)``,
    then random log2 multipliers in [-1, 1] around random uniform ratios (clipped to [r_min, r_max])."""
    rng = np.random.default_rng(seed)
    n = len(channels)
    out = [[1.0] * n]
    uniform = np.linspace(0.9, max(cfg.r_min, 0.05), max(1, samples // 3))
    out += [[float(r)] * n for r in uniform]
    while len(out) < samples:
        base = rng.uniform(max(cfg.r_min, 0.1), 0.9)
        out.append([float(np.clip(base * 2.0 ** rng.uniform(-1, 1), cfg.r_min, cfg.r_max)) for _ in range(n)])
    return out[:samples]


def fit_latency_model(
    model: nn.Module,
    table: MacsTable,
    input_shape: Sequence[int],
    cfg: PruningConfig,
    backend: str,
    batch: int = 1,
    samples: int = 24,
    seed: int = 0,
) -> LatencyModel:
    """Time ``samples`` sub-networks of ``model`` on ``backend`` and fit the latency model.

    :param model: the unpruned network (``inplace=False``).
    :param table: its MACs table (the groups' order defines the kept vectors).
    :param input_shape: (1, C, H, W) the table was built with; timing uses batch ``batch``.
    :param cfg: the pruning config (rounding, r_min).
    :param backend: ``torch-cpu`` | ``onnxruntime-cpu`` | ``torch-cuda``.
    :param batch: B of the timed input.
    :param samples: sub-networks to time (>= 4).
    :param seed: seed of the random allocations (each is pruned with
        :func:`~collabprune.pruning.prune.prune_model`).
    :raises ValueError: ``samples < 4``.
    :raises RuntimeError: the backend is not available here.
    """
    from scipy.optimize import nnls

    from collabprune.pruning.prune import prune_model

    if samples < 4:
        raise ValueError(f"a latency model needs at least 4 timed sub-networks, got {samples}")
    shape1 = tuple(int(s) for s in input_shape)
    timed = (batch, *shape1[1:])
    example = torch.zeros(shape1)
    level, act = layer_geometry(model, table, timed)
    rows, times = [], []
    for i, ratios in enumerate(sample_allocations(table.channels.tolist(), cfg, samples, seed)):
        net, spec = (model, None) if i == 0 else prune_model(model, example, ratios, cfg)
        kept = np.asarray(table.channels if spec is None else spec.kept, dtype=np.int64)
        rows.append(features(table, kept, level, act))
        times.append(1e3 * backend_latency_s(net, timed, backend))
    x = np.asarray(rows)
    scale = np.maximum(x[0], 1e-12)
    design = np.concatenate([np.ones((len(x), 1)), x / scale], axis=1)
    y = np.asarray(times)
    coef, _ = nnls(design, y)
    pred = design @ coef
    return LatencyModel(
        backend=backend, batch=int(batch), input_shape=timed, layers=tuple(table.layers),
        channels=tuple(int(c) for c in table.channels),
        layer_level=tuple(int(v) for v in level), layer_act=tuple(int(v) for v in act),
        scale=tuple(float(v) for v in scale), coef_ms=tuple(float(v) for v in coef), teacher_ms=float(y[0]),
        fit_samples=len(y), fit_error_pct=float(100 * np.mean(np.abs(pred - y) / y)),
        machine={**machine_info(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> LatencyModel:
    return LatencyModel.from_dict(json.loads(Path(path).read_text()))


def load_latency_model(path: Path | str | None, where: str = "pruning.latency_model") -> LatencyModel:
    """Read a latency model file (cached per path and modification time).

    :raises ConfigError: no path (a latency budget before its model was measured), a missing file or bad JSON.
    """
    if path is None:
        raise ConfigError(f"{where}: a latency budget needs its measured latency model; `collabprune search` "
                          "measures it into RUN_DIR/latency_model.json (or set pruning.latency_model to one)")
    p = Path(path)
    try:
        return _load(str(p.resolve()), p.stat().st_mtime_ns)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"{where}: cannot read the latency model {p} ({type(err).__name__}: {err})") from None


__all__ = ["LatencyModel", "features", "fit_latency_model", "layer_geometry", "load_latency_model",
           "sample_allocations"]
