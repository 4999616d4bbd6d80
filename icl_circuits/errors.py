"""User-facing errors.

Every error a user can cause by bad input (a config key, a CLI argument, a file on disk)
is raised as a subclass of :class:`ICLError`. The CLI prints ``str(err)`` as one line and
exits with status 2, so messages must name the field or file and what was expected.
"""

from __future__ import annotations


class ICLError(Exception):
    """Base class for errors caused by user input; the CLI prints them as one line."""


class ConfigError(ICLError, ValueError):
    """An invalid config value, key or combination of values."""


class RunFolderError(ICLError):
    """A run folder that is missing, locked, incompatible or corrupt."""


class CheckpointError(RunFolderError):
    """A checkpoint that is missing, truncated or fails its checksum."""


class DataError(ICLError):
    """A data file (e.g. the Omniglot pack) that is missing or corrupt."""


class DivergedError(ICLError):
    """Training stopped because the loss or a metric became NaN or infinite."""


class LayoutError(ICLError, ValueError):
    """An analysis that the run's token layout (``data.layout``) does not support."""
