"""Channel space (prunable groups), ratios -> physical sub-network, sub-network specs (DESIGN.md §3).

Import from the submodules: ``groups`` (discover_groups, PrunableGroup), ``prune`` (prune_model,
kept_channels), ``space`` (ChannelSpace), ``costs`` (per-group MACs table). This package imports
nothing itself. The sub-network spec (plain data, used to rebuild exported networks without
torch-pruning) is :mod:`collabprune.models.spec`: pruning depends on models, never the reverse.
"""
