"""Metrics: FID (pytorch-fid) and its fallback, MACs/params, latency (DESIGN.md §1, §4)."""

# --- FID / Frechet distance (collabprune.metrics.fid) ---------------------------------------------
from collabprune.metrics.fid import (
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    FeatureFn,
    FidScorer,
    feature_stats,
    frechet_distance,
    hub_cache_weights_path,
    inception_features,
    load_inception,
    make_random_inception_weights,
    real_stats,
    resolve_inception_weights,
)
# --- end FID ----------------------------------------------------------------------------------------
