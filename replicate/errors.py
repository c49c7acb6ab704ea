"""One exception type per kind of user mistake, each carrying the fix in its message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReplicateError(Exception):
    """Base class of every error this package raises on purpose."""


class DatasetMissingError(ReplicateError, FileNotFoundError):
    """A dataset is not where the configuration says; the message says what to get and where."""


class ConfigError(ReplicateError, ValueError):
    """A configuration value or override is not allowed; the message names the key and the choices."""


class UnknownModelError(ConfigError, KeyError):
    """`replicate.models.build` was asked for a name the registry does not hold."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class ExactTableMismatch(ReplicateError, AssertionError):
    """A cell computed from a model definition falls outside the paper's value and its tolerance."""


def choices(name: str, allowed: Iterable[str]) -> str:
    """'did you mean' hint plus the full list of allowed values, for error messages."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Allowed: {', '.join(allowed)}."


class IncompleteRunError(ReplicateError, RuntimeError):
    """A run ended without a value its tables read (a NaN, a missing metric, no step): not cached."""


class RunLockedError(ReplicateError, RuntimeError):
    """Another process is writing the run folder this command would delete (`--force`)."""


class CorruptFileError(ReplicateError, ValueError):
    """A file the workbook wrote or reads cannot be read (truncated, not what it should be)."""


class FloorNotMet(ReplicateError, AssertionError):
    """A reduced-profile run learned less than the floor its paper config sets."""
