"""Channel space (prunable groups), ratios -> physical sub-network, sub-network specs (DESIGN.md §3).

Import from the submodules: ``groups`` (discover_groups, PrunableGroup), ``prune`` (prune_model,
kept_channels), ``space`` (ChannelSpace), ``spec`` (SubnetSpec). This package imports nothing
itself, so ``collabprune.pruning.spec`` (plain data, used to rebuild exported networks) loads
without torch-pruning.
"""
