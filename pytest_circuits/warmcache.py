"""What a warm session reads instead of recomputing, beside the analysis cache (torch-free).

Two kinds of entry live in the analysis cache directory (``--circuits-cache-dir``), under the
same trust model as :mod:`pytest_circuits.cache` (an accelerator, never an authority: an entry
that fails a check is rebuilt, never used; nothing is unpickled; the checksums catch bit rot,
torn files and hand edits, not a forger who rewrites an entry consistently, so a release
decision should run with ``--circuits-no-cache``):

- **small JSON records** (:func:`read_record`, :func:`write_record`): one file per key, with a
  SHA-256 of its content, written atomically; the bridge-parity verdict of a model on a task is
  one (``parity.ensure_bridge_parity``);
- **dequantised GGUF models** (:class:`DenseEntry`): a directory ``gguf-<key>`` holding what
  ``CircuitModel.save_pretrained`` writes for the model dequantised from a GGUF file
  (safetensors weights, config.json, tokenizer files; never a pickle) and a ``manifest.json``
  naming every file with its size and SHA-256 (the weights by the model's weights fingerprint,
  which every load computes anyway), the weights fingerprint and the tokenizer digest of the
  model it was saved from. Keyed by the GGUF file's content digest, the dtype and the
  library versions (torch, transformers, transformer-lens, gguf). The directory is written under
  a temporary name and renamed into place once complete, so a killed writer leaves no entry
  that is later read (only a ``.gguf-*.tmp`` directory, removed by a later write of that key).

No cache directory, or caching disabled (``--circuits-no-cache``): nothing is read or written.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cache
from .atomic import write_bytes_atomic

#: Bump when what a record or a dense entry holds changes (part of every key).
WARM_FORMAT = 2  # 2: a dense copy keeps the GGUF config's architectures (none)
#: The largest JSON record (or manifest) read; anything bigger was not written here.
MAX_RECORD_BYTES = 4 * 2**20
#: The manifest's name inside a dense entry.
MANIFEST = "manifest.json"
#: Weight files of a dense entry: checked through the weights fingerprint after loading
#: (hashing them here would read the weights twice); every other file by its SHA-256.
WEIGHT_SUFFIX = ".safetensors"
#: A temporary directory of a killed writer older than this is removed by the next write.
STALE_SECONDS = 3600.0


def directory() -> Path | None:
    """The analysis cache directory when disk caching is on, else None."""
    store = cache.store()
    if not store.enabled or store.directory is None:
        return None
    return Path(store.directory)


def _warn(message: str) -> None:
    warnings.warn(message, cache.CacheWarning, stacklevel=3)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


#: Sealed files (records, manifests) are written and checked as the analysis cache's entries are.
_plain, _sealed = cache.plain, cache.seal


def _unseal(data: bytes, expected: dict[str, Any]) -> dict[str, Any]:
    return cache.unseal(data, expected, what="JSON")


def _small_file(path: Path) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_RECORD_BYTES`; raises ``ValueError``
    saying why anything else is not a record (``FileNotFoundError`` when there is none)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError("it is not a regular file")
        if status.st_size > MAX_RECORD_BYTES:
            raise ValueError(f"it holds {status.st_size} bytes, more than a record may hold")
        data = os.read(fd, MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError("it grew beyond the size a record may hold")
        return data
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- JSON records


def read_record(kind: str, parts: dict[str, Any]) -> dict[str, Any] | None:
    """The data stored by :func:`write_record` for ``(kind, parts)``, or None: no cache
    directory, no record, or a record that fails a check (one :class:`CacheWarning`; it is
    recomputed and rewritten by the caller)."""
    folder = directory()
    if folder is None:
        return None
    key = cache.cache_key(kind, {"warm_format": WARM_FORMAT, **parts})
    path = cache.entry_path(folder, kind, key)
    try:
        data = _small_file(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as problem:
        _warn(f"analysis cache record {str(path)!r} was not used ({problem}); it is recomputed "
              "and rewritten")
        return None
    try:
        body = _unseal(data, {"kind": kind, "key": key, "parts": _plain(parts)})
        value = body.get("value")
        if not isinstance(value, dict):
            raise ValueError("no value")
    except ValueError as problem:
        _warn(f"analysis cache record {str(path)!r} was not used ({problem}); it is recomputed "
              "and rewritten")
        return None
    return value


def write_record(kind: str, parts: dict[str, Any], value: dict[str, Any]) -> None:
    """Store ``value`` (JSON data) for ``(kind, parts)`` atomically; a directory that cannot
    take it leaves the result in memory only (one warning), never fails the caller."""
    folder = directory()
    if folder is None:
        return
    key = cache.cache_key(kind, {"warm_format": WARM_FORMAT, **parts})
    path = cache.entry_path(folder, kind, key)
    body = {"kind": kind, "key": key, "parts": _plain(parts), "value": value}
    try:
        data = _sealed(body)
    except (TypeError, ValueError) as error:
        _warn(f"a {kind} record could not be written as JSON ({error}); it is kept in memory")
        return
    try:
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(f"{str(path)!r} is a directory")
        if path.is_symlink() or (path.exists() and not path.is_file()):
            path.unlink()
        write_bytes_atomic(path, data)
    except OSError as error:
        _warn(f"a {kind} record could not be written to the analysis cache ({error}); it is "
              "kept in memory for this session")


# ----------------------------------------------------------------------------- dense GGUF copies


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class DenseEntry:
    """Where the dequantised copy of one GGUF file (in one dtype) lives in the cache.

    ``parts`` is what the key covers (the GGUF file's SHA-256, the dtype, the transformers and
    gguf versions; :func:`pytest_circuits.cache.cache_key` adds torch's, transformer-lens' and
    pytest-circuits'); ``path`` is the entry's directory.
    """

    gguf: Path
    parts: dict[str, Any]
    key: str
    path: Path

    @classmethod
    def for_gguf(cls, gguf: Path, dtype: str) -> DenseEntry | None:
        """The entry of ``gguf`` dequantised to ``dtype``; None when disk caching is off.
        Hashes the GGUF file (about 0.4 s for 100 MB)."""
        folder = directory()
        if folder is None:
            return None
        parts = {
            "warm_format": WARM_FORMAT,
            "gguf_sha256": file_sha256(gguf),
            "dtype": dtype,
            "transformers": _version("transformers"),
            "gguf": _version("gguf"),
        }
        key = cache.cache_key("gguf-dense", parts)
        return cls(gguf=gguf, parts=parts, key=key, path=folder / f"gguf-{key[:32]}")

    def read(self) -> dict[str, str] | None:
        """The manifest's expectations (``weights_sha256``, ``tokenizer_sha256``) when the entry
        exists and every file but the weights checks out; None when there is no entry. A damaged
        entry is reported (one warning), removed, and None returned, so it is rebuilt."""
        try:
            status = os.lstat(self.path)
        except OSError:
            return None
        try:
            if not stat.S_ISDIR(status.st_mode):
                raise ValueError("it is not a directory")
            return self._check()
        except (OSError, ValueError) as problem:
            self.discard(str(problem))
            return None

    def _check(self) -> dict[str, str]:
        body = _unseal(_small_file(self.path / MANIFEST),
                       {"kind": "gguf-dense", "key": self.key, "parts": _plain(self.parts)})
        files = body.get("files")
        if not isinstance(files, dict) or not files:
            raise ValueError("the manifest lists no files")
        present = {entry.name for entry in os.scandir(self.path)} - {MANIFEST}
        if present != set(files):
            extra, missing = sorted(present - set(files)), sorted(set(files) - present)
            raise ValueError(f"its files differ from the manifest (unlisted: {extra or '-'}; "
                             f"missing: {missing or '-'})")
        for name, record in files.items():
            path = self.path / name
            status = os.lstat(path)
            if not stat.S_ISREG(status.st_mode):
                raise ValueError(f"{name} is not a regular file")
            if not isinstance(record, dict) or status.st_size != record.get("size"):
                raise ValueError(f"{name} holds {status.st_size} bytes, the manifest says "
                                 f"{record.get('size') if isinstance(record, dict) else '?'}")
            if not name.endswith(WEIGHT_SUFFIX) and file_sha256(path) != record.get("sha256"):
                raise ValueError(f"{name} changed after it was written (SHA-256 differs)")
        expected = {k: body.get(k) for k in ("weights_sha256", "tokenizer_sha256")}
        if not all(isinstance(v, str) and len(v) == 64 for v in expected.values()):
            raise ValueError("the manifest names no weights fingerprint or tokenizer digest")
        return {k: str(v) for k, v in expected.items()}

    def discard(self, problem: str) -> None:
        """Warn that the entry was not used and why, and remove it (it is rebuilt)."""
        _warn(f"the dequantised copy of {str(self.gguf)!r} in the analysis cache "
              f"({str(self.path)!r}) was not used ({problem}); it is rebuilt from the GGUF file")
        self._remove(self.path)

    @staticmethod
    def _remove(path: Path) -> None:
        """Move ``path`` aside, then delete it: a reader never sees it half deleted."""
        aside = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            os.rename(path, aside)
        except OSError:
            return
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)

    def write(self, save: Callable[[Path], Any], *, weights_sha256: str,
              tokenizer_sha256: str) -> bool:
        """Build the entry: ``save(directory)`` writes the model there (safetensors, config,
        tokenizer), then the manifest is written and the directory renamed into place. Returns
        whether the entry is in place; a failure warns once and leaves no entry."""
        parent = self.path.parent
        self._sweep_stale(parent)
        tmp = parent / f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir(parents=True)
            save(tmp)
            files = {}
            for entry in sorted(os.scandir(tmp), key=lambda e: e.name):
                if not entry.is_file(follow_symlinks=False):
                    raise OSError(f"the saved model holds {entry.name!r}, not a plain file")
                if entry.name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".py")):
                    raise OSError(f"the saved model holds {entry.name!r} (a pickle or code); "
                                  "only safetensors, JSON and tokenizer files are cached")
                path = Path(entry.path)
                with open(path, "rb") as handle:  # durable before the rename publishes it
                    os.fsync(handle.fileno())
                record: dict[str, Any] = {"size": path.stat().st_size}
                if not entry.name.endswith(WEIGHT_SUFFIX):
                    record["sha256"] = file_sha256(path)
                files[entry.name] = record
            if not any(name.endswith(WEIGHT_SUFFIX) for name in files):
                raise OSError("the saved model holds no safetensors weights")
            body = {"kind": "gguf-dense", "key": self.key, "parts": _plain(self.parts),
                    "files": files, "weights_sha256": weights_sha256,
                    "tokenizer_sha256": tokenizer_sha256, "gguf": str(self.gguf)}
            write_bytes_atomic(tmp / MANIFEST, _sealed(body))
            if os.path.lexists(self.path) and not os.path.isdir(self.path):
                self._remove(self.path)  # a file or link squatting on the name
            # onto a directory another process completed meanwhile the rename fails, and
            # that entry (as good as this one) stays
            os.rename(tmp, self.path)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                return True
            _warn(f"the dequantised copy of {str(self.gguf)!r} could not be kept in the "
                  f"analysis cache ({type(error).__name__}: {error}); the GGUF file is "
                  "dequantised again next session")
            return False
        _fsync_dir(parent)
        return True

    def _sweep_stale(self, parent: Path) -> None:
        """Remove temporary directories of this key that a killed writer left behind."""
        cutoff = time.time() - STALE_SECONDS
        try:
            candidates = list(parent.glob(f".{self.path.name}.*.tmp"))
        except OSError:
            return
        for leftover in candidates:
            try:
                if leftover.is_dir() and not leftover.is_symlink() and (
                        leftover.stat().st_mtime < cutoff):
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
