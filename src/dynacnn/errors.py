"""User-facing errors: one line that names the bad input and the fix."""

from __future__ import annotations


class DynacnnError(Exception):
    """An error caused by user input or environment; the CLI prints it as one line and exits 2."""


class DataError(DynacnnError):
    """A dataset file or directory is missing, corrupt or inconsistent."""


class CheckpointError(DynacnnError):
    """A checkpoint or run directory is missing, corrupt or made for another model."""


class ConfigError(DynacnnError):
    """A parameter (threshold, split point, bit-length, ...) is out of range."""
