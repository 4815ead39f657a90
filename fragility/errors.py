"""The one exception hierarchy of fragility.

Every error a user can cause derives from :class:`FragilityError`; its message is one line that names
the culprit (model, module, file, value), says what was expected and suggests the fix. The CLI prints
``str(error)`` and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AnalyzerError",
    "DataError",
    "FragilityError",
    "HeadError",
    "OutputError",
    "PluginError",
    "RecorderError",
    "SelectionError",
    "StoreError",
    "StoreVersionError",
    "close_matches",
    "output_dir",
]


class FragilityError(Exception):
    """Base class of every error fragility raises for bad input or bad state."""


class PluginError(FragilityError):
    """A plugin is malformed or two plugins claim the same name."""


class HeadError(FragilityError):
    """The classifier head of a model cannot be tapped."""


class RecorderError(FragilityError):
    """The recorder was used wrongly or was given bad data."""


class StoreError(FragilityError):
    """A store is missing, foreign, corrupt, truncated or locked by another writer."""


class StoreVersionError(StoreError):
    """A store was written by a newer schema version than this fragility understands."""


class SelectionError(FragilityError):
    """A selection (split, epoch, class, pass) names something the store does not hold."""


class OutputError(FragilityError):
    """An output folder or file (``--out``, a report) cannot be written."""


class DataError(FragilityError):
    """A data set is missing or malformed."""


class AnalyzerError(FragilityError):
    """An analyzer was asked for something impossible (unknown name, bad K, missing data)."""


def close_matches(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choices, or an empty string."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=0.5)
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(f) for f in found) + "?)"


def output_dir(path: str) -> str:
    """Create output folder ``path`` (and parents), or raise :class:`OutputError` in one line."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"output folder {path} is an existing file; choose a folder name with --out")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}; choose another --out folder") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"output folder {path} is not writable; choose another --out folder")
    return path
