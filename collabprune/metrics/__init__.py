"""Metrics: FID (pytorch-fid) and its fallback, MACs/params, latency, held-out image quality (DESIGN.md §1, §4).

A leaf package: import from its modules -- ``fid`` (FidScorer, real_stats), ``inception`` (the FID
Inception and its weights), ``frechet`` (frechet_distance, feature_stats), ``macs``, ``latency``,
``eval_net``, ``image_quality``.
"""
