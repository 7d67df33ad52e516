"""User-facing error types (DESIGN.md §7).

Every error a user can cause (a bad config field, a missing dataset, wrong checkpoint keys, an
infeasible budget, an unreadable image) is a :class:`CollabPruneError`. The CLI prints its one-line
message plus its hint and exits with code 2, without a traceback.
"""

from __future__ import annotations


class CollabPruneError(Exception):
    """Base class of all user errors.

    :param message: one line that says what went wrong and where (file, field, key).
    :param hint: optional one line that says how to fix it.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(CollabPruneError):
    """A config file, field or override is invalid."""


class DatasetError(CollabPruneError):
    """A dataset folder is missing, or an image in it is unreadable or wrongly shaped."""


class CheckpointError(CollabPruneError):
    """A checkpoint file is missing or its keys/shapes do not match the network."""


class BudgetError(CollabPruneError):
    """A MACs budget cannot be met within the allowed keep ratios."""


class FidWeightsError(CollabPruneError):
    """The Inception weights for FID cannot be found or downloaded."""


class RunDirError(CollabPruneError):
    """A run directory is missing, incomplete or belongs to a different config."""


class JobsError(CollabPruneError):
    """A Ray Jobs request failed: unreachable dashboard, missing or wrong token, unknown job."""


class SpaceMismatchError(CollabPruneError):
    """Two processes of a search built different channel spaces for one role (their digests differ):
    a keep-ratio vector would mean different channels to them (e.g. nodes with different versions)."""


class OnnxExportError(CollabPruneError):
    """The ONNX export cannot run (missing extra) or its output does not match PyTorch."""
