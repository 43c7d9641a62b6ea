"""Analysis results memoised in the session and on disk, keyed by what determines them.

The key covers the models' weight fingerprints, the task's fingerprint, every method setting
and the library versions, so a changed model or setting can never be served a stale result.
Disk entries are pickles written atomically (temporary file + ``os.replace``), so parallel
xdist workers computing the same entry never leave a torn file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .atomic import write_bytes_atomic

T = TypeVar("T")

#: Part of every key. Entries are pickles of result classes, so a change to those classes' fields
#: must bump it, or an old entry would unpickle into an object of the wrong shape.
#: 2: typed ModelInfo in reports, CompareSettings, fan_in_all, SweepResult.confirm_top_k.
CACHE_FORMAT = 2

_memory: dict[str, Any] = {}
_settings: dict[str, Any] = {"directory": None, "enabled": True}


def configure(directory: str | os.PathLike[str] | None, enabled: bool = True) -> None:
    """Set the on-disk cache directory (None: memory only) and whether caching is on at all."""
    _settings["directory"] = Path(directory) if directory is not None else None
    _settings["enabled"] = bool(enabled)
    if not enabled:
        _memory.clear()


def cache_key(kind: str, parts: dict[str, Any]) -> str:
    from .analysis.fingerprint import library_versions

    payload = {
        "format": CACHE_FORMAT, "kind": kind, "parts": parts, "versions": library_versions()
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def cached(kind: str, parts: dict[str, Any], compute: Callable[[], T]) -> T:
    """Return the memoised result for ``parts`` or compute, store and return it."""
    if not _settings["enabled"]:
        return compute()
    key = cache_key(kind, parts)
    if key in _memory:
        return _memory[key]
    directory: Path | None = _settings["directory"]
    path = directory / f"{kind}-{key[:32]}.pkl" if directory is not None else None
    if path is not None and path.is_file():
        try:
            with path.open("rb") as handle:
                value = pickle.load(handle)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            value = None  # unreadable entry (older code, torn copy): recompute it
        if value is not None:
            _memory[key] = value
            return value
    value = compute()
    _memory[key] = value
    if path is not None:
        _write_atomic(path, value)
    return value


def _write_atomic(path: Path, value: Any) -> None:
    write_bytes_atomic(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
