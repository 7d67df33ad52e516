"""Objectives: local-density KDE objective, GAN losses, G-D balance statistic (DESIGN.md §4), adversarial pull."""

from collabprune.objectives.balance import balance_rho, balance_term, tail_mean
from collabprune.objectives.kde import (
    kde_objective,
    make_neighbourhoods,
    median_bandwidth,
    pixel_features,
    teacher_d_features,
)
from collabprune.objectives.losses import GANLoss
from collabprune.objectives.pull import adversarial_pull

__all__ = [
    "GANLoss",
    "adversarial_pull",
    "balance_rho",
    "balance_term",
    "kde_objective",
    "make_neighbourhoods",
    "median_bandwidth",
    "pixel_features",
    "tail_mean",
    "teacher_d_features",
]
