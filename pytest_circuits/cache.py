"""Analysis results memoised in the session and on disk, keyed by what determines them.

The key covers the models' weight fingerprints, the task's fingerprint, every method setting
and the library versions, so a changed model or setting is never served a stale result.

Trust model: the cache is an accelerator, never an authority. A disk entry is plain JSON (the
typed result's ``to_dict``, read back with its own ``from_dict``; nothing is unpickled or
imported by name, so an entry cannot run code), written atomically, with its key fields and a
SHA-256 checksum of its content. An entry that fails any check (unparsable, checksum, key or
fields differ, unknown type, a value that does not read back to the same data) is recomputed and
rewritten, never used; a cache directory that cannot be used turns disk caching off with one
warning, never fails a gate. Only a regular file (or a symbolic link to one) of at most
:data:`MAX_ENTRY_BYTES` is read as an entry: a FIFO, a device such as ``/dev/zero``, a socket
or a directory at an entry's path is a miss with one warning, never a hang or an endless read,
and a write replaces such a file instead of writing through it (a directory is left alone and
the result kept in memory). The checksum catches bit rot and torn files, not a forger: anyone
who can write to the cache directory can write a consistent entry, so a release decision should
run with ``--circuits-no-cache``.

Where entries live, whether caching is on and what is memoised belong to the running context's
:class:`~pytest_circuits.config.context.CacheStore` (one per pytest session, so a second session
in the same process starts empty); :func:`configure` and :func:`forget` act on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import stat
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .atomic import write_bytes_atomic
from .config import context
from .config.context import CacheStore
from .results.circuit import CircuitResult
from .results.fingerprint import library_versions
from .results.reports import ModelReport, PairReport, report_from_dict
from .results.roles import RoleResult
from .results.sweep import SweepResult

T = TypeVar("T")

#: Part of every key and every entry. Bump it when a cached result type's fields change, so an
#: old entry is recomputed instead of read into the wrong shape.
#: 2: typed ModelInfo in reports, CompareSettings, fan_in_all, SweepResult.confirm_top_k.
#: 3: JSON entries with a checksum instead of pickles; ComponentEffect.bound, screening.
#: 4: keys name a model by its content (weights and tokenizer digest), no longer its name;
#:    SweepResult.pruned, TaskPerformance.answer_prob.
#: 5: ComponentEffect.stderr, and discards decided above it (stored pair reports recomputed).
CACHE_FORMAT = 5

#: A disk entry's file name ends with this (older releases wrote ``.pkl`` files, never read).
SUFFIX = ".json"

#: The largest entry file read (or written). A pair report of a model with thousands of heads is
#: a few MiB of JSON; a bigger file is not an entry this release wrote, so it is a miss, and it is
#: never read into memory.
MAX_ENTRY_BYTES = 256 * 2**20


class CacheWarning(UserWarning):
    """The analysis cache could not use a directory or an entry; results were recomputed."""


def store() -> CacheStore:
    """The analysis cache of the running context (the session's, under pytest)."""
    return context.current().cache


class _StoreSettings(MutableMapping[str, Any]):
    """The running store's ``"directory"`` and ``"enabled"`` as a mapping: how callers saved
    and restored the settings when they were a module dict (``dict(cache._settings)``)."""

    _KEYS = ("directory", "enabled")

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(store(), key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._KEYS:
            raise KeyError(f"{key!r} is not a cache setting; the settings are {self._KEYS}")
        setattr(store(), key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("cache settings cannot be deleted; set them with cache.configure()")

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


#: Compatibility view of the running store's settings (see :class:`_StoreSettings`).
_settings = _StoreSettings()


@dataclass(frozen=True)
class _Codec:
    """How one result type is written and read: ``to_dict`` out, its own reader back."""

    name: str
    matches: Callable[[Any], bool]
    read: Callable[[dict[str, Any]], Any]


def _codecs() -> list[_Codec]:
    return [
        _Codec("report", lambda v: isinstance(v, (ModelReport, PairReport)), report_from_dict),
        _Codec("sweep", lambda v: isinstance(v, SweepResult), SweepResult.from_dict),
        _Codec("roles", lambda v: isinstance(v, RoleResult), RoleResult.from_dict),
        _Codec("circuit", lambda v: isinstance(v, CircuitResult), CircuitResult.from_dict),
    ]


def configure(directory: str | os.PathLike[str] | None, enabled: bool = True) -> None:
    """Set the on-disk cache directory (None: memory only) and whether caching is on at all.

    A directory that cannot be created or written turns disk caching off with one
    :class:`CacheWarning`; results are still memoised in memory.
    """
    cache = store()
    cache.directory = Path(directory) if directory is not None else None
    cache.enabled = bool(enabled)
    if not enabled:
        cache.memory.clear()
    if enabled and directory is not None:
        problem = directory_problem(Path(directory))
        if problem is not None:
            _disable_disk(Path(directory), problem)


def forget() -> None:
    """Drop every result memoised in memory and every warning already given (a new session);
    the directory setting and the disk entries stay."""
    cache = store()
    cache.memory.clear()
    cache.warned.clear()


def directory_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold the cache (None when it can): created if missing, then a
    probe file written and removed, as the real entries will be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_dir():
            return "it is not a directory"
        # a name nothing else uses: whatever squats on a fixed name cannot make the probe fail
        probe = directory / f".probe-{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}"
        write_bytes_atomic(probe, b"{}")
        os.unlink(probe)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _disable_disk(directory: Path, problem: str) -> None:
    store().directory = None
    _warn_once(
        f"dir:{directory}",
        f"analysis cache directory {str(directory)!r} cannot be used ({problem}); results are "
        "kept in memory for this session only. Point --circuits-cache-dir at a writable "
        "directory, or pass --circuits-no-cache to silence this.",
    )


def _warn_once(tag: str, message: str) -> None:
    warned = store().warned
    if tag in warned:
        return
    warned.add(tag)
    warnings.warn(message, CacheWarning, stacklevel=3)


def _plain(parts: dict[str, Any]) -> Any:
    """``parts`` as the JSON data an entry stores (non-JSON values as their text)."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def cache_key(kind: str, parts: dict[str, Any]) -> str:
    payload = {
        "format": CACHE_FORMAT, "kind": kind, "parts": parts, "versions": library_versions()
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def entry_path(directory: Path, kind: str, key: str) -> Path:
    """Where the entry for ``key`` lives (the kind keeps the directory readable)."""
    return directory / f"{kind}-{key[:32]}{SUFFIX}"


def _canonical(body: dict[str, Any]) -> bytes:
    # NaN and infinities are legal in results (Python's json writes and reads them)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(body)).hexdigest()


def seal(body: dict[str, Any]) -> bytes:
    """``body`` as the bytes of a sealed file: canonical JSON with its checksum beside it."""
    return _canonical({"sha256": _checksum(body), "body": body})


def unseal(data: bytes, expected: dict[str, Any], *, what: str = "a JSON entry"
           ) -> dict[str, Any]:
    """The body of a sealed file's bytes, checked against its checksum and the ``expected``
    fields; raises ``ValueError`` saying what is wrong (so the caller recomputes); ``what`` the
    file should have been, for the message when it is not JSON."""
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"not {what} ({error})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("body"), dict):
        raise ValueError("not a cache entry (no body)")
    body = entry["body"]
    if entry.get("sha256") != _checksum(body):
        raise ValueError("checksum mismatch (the file changed after it was written)")
    for name, value in expected.items():
        if body.get(name) != value:
            raise ValueError(f"stored {name} {body.get(name)!r} is not the expected {value!r}")
    return body


def plain(parts: dict[str, Any]) -> Any:
    """``parts`` as the JSON data an entry stores (non-JSON values as their text)."""
    return _plain(parts)


def encode_entry(kind: str, key: str, parts: dict[str, Any], value: Any) -> bytes | None:
    """The bytes of a disk entry for ``value``, or None for a type the cache does not store."""
    codec = next((c for c in _codecs() if c.matches(value)), None)
    if codec is None:
        return None
    body = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "key": key,
        "parts": _plain(parts),
        "type": codec.name,
        "value": value.to_dict(),
    }
    return seal(body)


def decode_entry(data: bytes, kind: str, key: str, parts: dict[str, Any]) -> Any:
    """The typed result in an entry's bytes; raises ``ValueError`` saying why an entry cannot
    be used (so the caller recomputes it)."""
    body = unseal(data, {"format": CACHE_FORMAT, "kind": kind, "key": key,
                         "parts": _plain(parts)})
    codec = next((c for c in _codecs() if c.name == body.get("type")), None)
    if codec is None or not isinstance(body.get("value"), dict):
        raise ValueError(f"unknown result type {body.get('type')!r}")
    try:
        value = codec.read(body["value"])
        again = value.to_dict()
    except Exception as error:  # a reader's own complaint about the data, whatever its type
        raise ValueError(f"the {codec.name} does not read back ({error})") from None
    if not _same_data(again, body["value"]):
        raise ValueError(f"the {codec.name} reads back to different values")
    return value


def _same_data(a: Any, b: Any) -> bool:
    """JSON data equal, NaN equal to NaN (a result may hold NaN), tuples equal to lists."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_data(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_data(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def cached(kind: str, parts: dict[str, Any], compute: Callable[[], T]) -> T:
    """Return the memoised result for ``parts`` or compute, store and return it."""
    cache = store()
    if not cache.enabled:
        return compute()
    key = cache_key(kind, parts)
    if key in cache.memory:
        return cache.memory[key]
    directory = cache.directory
    path = entry_path(directory, kind, key) if directory is not None else None
    if path is not None:
        value = _read(path, kind, key, parts)
        if value is not None:
            cache.memory[key] = value
            return value
    value = compute()
    cache.memory[key] = value
    if path is not None:
        _write(path, kind, key, parts, value)
    return value


def on_disk(kind: str, parts: dict[str, Any]) -> Any:
    """The entry stored on disk under ``parts`` now (not this session's copy in memory): what
    another process (an xdist worker) may have written since; None when there is none."""
    cache = store()
    if not cache.enabled or cache.directory is None:
        return None
    key = cache_key(kind, parts)
    return _read(entry_path(cache.directory, kind, key), kind, key, parts)


def replace(kind: str, parts: dict[str, Any], value: Any) -> None:
    """Store ``value`` under ``parts`` in place of what is there, in memory and on disk (written
    atomically, as every entry is): a result refined after it was first stored, such as a sweep
    whose estimates a gate measured exactly. Nothing happens while caching is off."""
    cache = store()
    if not cache.enabled:
        return
    key = cache_key(kind, parts)
    cache.memory[key] = value
    if cache.directory is not None:
        _write(entry_path(cache.directory, kind, key), kind, key, parts, value)


class _NotAnEntry(Exception):
    """What is at an entry's path cannot be an entry (its message says why); a miss."""


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _entry_bytes(path: Path) -> bytes:
    """The bytes of the entry file at ``path``; raises :class:`_NotAnEntry` for anything but a
    regular file of at most :data:`MAX_ENTRY_BYTES` (a symbolic link is followed).

    One descriptor is opened without blocking (a FIFO opens at once instead of waiting for a
    writer) and checked with ``fstat`` before a byte is read, so what is read is what was
    checked even if the path is swapped meanwhile, and at most the limit plus one byte is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _NotAnEntry(f"it is {_file_kind(status.st_mode)}, not a regular file")
        limit = MAX_ENTRY_BYTES
        if status.st_size > limit:
            raise _NotAnEntry(f"it holds {status.st_size} bytes, more than the {limit} an entry "
                              "may hold; it was not read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew after the check
            raise _NotAnEntry(f"it holds more than the {limit} bytes an entry may hold")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read(path: Path, kind: str, key: str, parts: dict[str, Any]) -> Any:
    try:
        data = _entry_bytes(path)
    except FileNotFoundError:
        return None
    except _NotAnEntry as problem:
        _warn_once(
            f"entry:{path}",
            f"analysis cache entry {str(path)!r} was not used ({problem}); the result was "
            "recomputed and is written in its place when the place can hold a file",
        )
        return None
    except OSError as error:
        if not path.parent.is_dir():
            _disable_disk(path.parent, f"{type(error).__name__}: {error}")
        return None  # unreadable entry: recompute; the write below replaces it if it can
    try:
        return decode_entry(data, kind, key, parts)
    except ValueError as problem:
        _warn_once(
            f"entry:{path}",
            f"analysis cache entry {str(path)!r} was not used ({problem}); the result was "
            "recomputed and the entry rewritten",
        )
        return None


def _clear_place(path: Path) -> bool:
    """Make ``path`` ready for an entry to be renamed onto it: a symbolic link, FIFO, device or
    socket there is removed (the rename would replace it anyway; removing it first keeps the new
    entry's permissions from being copied off a link's target). False, with one warning, when a
    directory is there: it is left alone."""
    try:
        status = os.lstat(path)
    except OSError:
        return True  # nothing there (or nothing we can see): the write says if it fails
    if stat.S_ISREG(status.st_mode):
        return True
    if stat.S_ISDIR(status.st_mode):
        _warn_once(
            f"entry:{path}",
            f"analysis cache entry {str(path)!r} is a directory, so the result is kept in memory "
            "for this session only; remove that directory to cache the result on disk",
        )
        return False
    try:
        os.unlink(path)  # removes the link, FIFO or device node itself, never its target
    except OSError:
        pass  # gone already, or the rename below replaces it (or says why it cannot)
    return True


def _write(path: Path, kind: str, key: str, parts: dict[str, Any], value: Any) -> None:
    try:
        data = encode_entry(kind, key, parts, value)
    except (TypeError, ValueError) as error:  # a value JSON cannot hold: memory only
        _warn_once(
            f"encode:{kind}",
            f"a {kind} result could not be written to the analysis cache as JSON ({error}); it "
            "is kept in memory for this session only",
        )
        return
    if data is None:
        return  # a type the cache cannot write as JSON stays in memory
    if len(data) > MAX_ENTRY_BYTES:  # it could never be read back
        _warn_once(
            f"entry:{path}",
            f"a {kind} result is {len(data)} bytes of JSON, more than the {MAX_ENTRY_BYTES} an "
            f"analysis cache entry may hold; it is kept in memory for this session only",
        )
        return
    if not _clear_place(path):
        return
    try:
        write_bytes_atomic(path, data)
    except OSError as error:
        _disable_disk(path.parent, f"{type(error).__name__}: {error}")
