"""The analysis cache with something other than an entry file at an entry's path: a FIFO (which
would block a reader forever), a link to /dev/zero (an endless read), an oversized file, a
directory or a symbolic link. Each is a miss with one warning and a recomputed value, within
seconds and bounded memory; a write replaces the thing instead of writing through it, and a
directory is left alone while the disk cache keeps working for every other entry."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits import cache
from pytest_circuits.analysis.comparison import ModelReport, model_report
from pytest_circuits.models import load_model
from pytest_circuits.tasks import builtin_task

PARTS = {"name": "zoo:tiny-student", "model": "sha-of-weights", "task": "numerals", "seed": 0}
OTHER_PARTS = {**PARTS, "seed": 1}
#: Seconds a lookup may take here; a blocked one never returns, a slow one takes far less.
PATIENCE = 20.0


@pytest.fixture(scope="module")
def report() -> ModelReport:
    model = load_model("zoo:tiny-student")
    return model_report(model, builtin_task("numerals", n_prompts=16), components="heads")


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A fresh on-disk cache (created) for one test; the settings are put back after."""
    saved = dict(cache._settings)
    cache.forget()
    cache.configure(tmp_path / "cache")
    yield tmp_path / "cache"
    cache.forget()
    cache._settings.update(saved)


class Computation:
    """Counts its calls and returns a fixed value."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


def entry(directory: Path, parts: dict[str, Any] = PARTS) -> Path:
    return cache.entry_path(directory, "model", cache.cache_key("model", parts))


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and cache._same_data(json.loads(json.dumps(a.to_dict())),
                                                   json.loads(json.dumps(b.to_dict())))


def cache_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]


def lookup_within(seconds: float, parts: dict[str, Any], compute: Computation,
                  unblock: Callable[[], None] = lambda: None) -> tuple[Any, list[str]]:
    """``cache.cached`` in a thread: its value and its cache warnings, or a failed test when it
    has not returned after ``seconds`` (``unblock`` then frees the thread before the test ends)."""
    outcome: dict[str, Any] = {}

    def look() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome["value"] = cache.cached("model", parts, compute)
            except BaseException as error:  # reported below, in the test's thread
                outcome["error"] = error
        outcome["warnings"] = cache_warnings(caught)

    # the thread runs in this test's context, so it sees the store the fixture configured
    thread = threading.Thread(target=contextvars.copy_context().run, args=(look,), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(seconds)
        pytest.fail(f"the cache lookup had not returned after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], outcome["warnings"]


def feed_fifo(fifo: Path) -> Callable[[], None]:
    """Frees a reader blocked on ``fifo``: open its write end (without blocking) and close it."""

    def unblock() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    return unblock


def assert_rewritten(directory: Path, report: ModelReport) -> None:
    """A fresh session reads the entry the lookup wrote: a regular file, no warning."""
    assert entry(directory).is_file() and not entry(directory).is_symlink()
    cache.forget()
    compute = Computation(report)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)
        assert same(cache.cached("model", PARTS, compute), report)
    assert compute.calls == 0


# --------------------------------------------------------------------------- FIFOs and devices


@pytest.mark.parametrize("where", ["at the entry path", "linked from the entry path"])
def test_a_fifo_is_a_miss_with_one_warning_not_a_hang(directory: Path, report: ModelReport,
                                                      tmp_path: Path, where: str) -> None:
    fifo = entry(directory) if where == "at the entry path" else tmp_path / "elsewhere.fifo"
    os.mkfifo(fifo)
    if fifo != entry(directory):
        entry(directory).symlink_to(fifo)
    compute = Computation(report)
    value, warned = lookup_within(PATIENCE, PARTS, compute, unblock=feed_fifo(fifo))
    assert same(value, report) and compute.calls == 1
    assert len(warned) == 1 and "FIFO" in warned[0] and str(entry(directory)) in warned[0]
    if where == "linked from the entry path":  # the link was replaced, the FIFO left alone
        assert fifo.exists() and not fifo.is_file()
    assert_rewritten(directory, report)


def test_a_link_to_dev_zero_is_a_miss_read_in_bounded_memory(directory: Path,
                                                              tmp_path: Path) -> None:
    """In a child process limited to ~512 MiB more address space than it starts with, so an
    endless read fails there (MemoryError) instead of exhausting this machine."""
    script = textwrap.dedent(f"""
        import json, os, resource, warnings
        from pathlib import Path
        from pytest_circuits import cache
        size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, size + 512 * 2**20))
        cache.configure(Path({str(directory)!r}))
        parts = {PARTS!r}
        path = cache.entry_path(cache.store().directory, "model", cache.cache_key("model", parts))
        path.symlink_to("/dev/zero")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = cache.cached("model", parts, lambda: {{"recomputed": True}})
        print(json.dumps({{"value": value, "warnings": [str(w.message) for w in caught]}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(cache.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["value"] == {"recomputed": True}
    assert len(out["warnings"]) == 1 and "character device" in out["warnings"][0]
    assert os.path.realpath(entry(directory)) == "/dev/zero"  # nothing written: not a result


def test_a_link_to_a_device_is_replaced_by_the_entry_with_the_users_mode(
        directory: Path, report: ModelReport) -> None:
    """/dev/null (mode 0666, empty): a device in process without the risk of an endless read."""
    entry(directory).symlink_to("/dev/null")
    compute = Computation(report)
    previous = os.umask(0o022)
    try:
        value, warned = lookup_within(PATIENCE, PARTS, compute)
    finally:
        os.umask(previous)
    assert same(value, report) and compute.calls == 1
    assert len(warned) == 1 and "character device" in warned[0]
    assert entry(directory).stat().st_mode & 0o777 == 0o644  # not the device's 0666
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert_rewritten(directory, report)


# --------------------------------------------------------------------------- size


def test_an_entry_larger_than_the_limit_is_a_miss_and_not_read(
        directory: Path, report: ModelReport, monkeypatch: pytest.MonkeyPatch) -> None:
    key = cache.cache_key("model", PARTS)
    good = cache.encode_entry("model", key, PARTS, report)
    assert good is not None
    entry(directory).write_bytes(good)
    monkeypatch.setattr(cache, "MAX_ENTRY_BYTES", len(good))  # the limit itself is allowed
    compute = Computation(report)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)
        assert same(cache.cached("model", PARTS, compute), report)
    assert compute.calls == 0
    cache.forget()
    monkeypatch.setattr(cache, "MAX_ENTRY_BYTES", len(good) - 1)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        assert self != entry(directory), "an oversized entry was read"
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.warns(cache.CacheWarning, match=f"holds {len(good)} bytes") as caught:
        assert same(cache.cached("model", PARTS, compute), report)
    assert compute.calls == 1
    assert len(cache_warnings(caught.list)) == 1  # the skipped write adds no second warning
    monkeypatch.setattr(Path, "read_bytes", real)
    assert entry(directory).read_bytes() == good  # not rewritten: it could not be read back


def test_a_result_too_large_for_an_entry_stays_in_memory(directory: Path, report: ModelReport,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRY_BYTES", 1000)
    compute = Computation(report)
    with pytest.warns(cache.CacheWarning, match="kept in memory"):
        assert same(cache.cached("model", PARTS, compute), report)
    assert not entry(directory).exists()
    assert same(cache.cached("model", PARTS, compute), report) and compute.calls == 1


# --------------------------------------------------------------------------- directories, links


def test_a_directory_at_an_entry_path_is_a_miss_and_the_disk_cache_stays_on(
        directory: Path, report: ModelReport) -> None:
    squatter = entry(directory)
    squatter.mkdir()
    (squatter / "keep").write_text("mine")
    compute = Computation(report)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert same(cache.cached("model", PARTS, compute), report)
        cache.cached("model", OTHER_PARTS, Computation(report))
    warned = cache_warnings(caught)
    assert len(warned) == 1 and "a directory" in warned[0] and str(squatter) in warned[0]
    assert (squatter / "keep").read_text() == "mine"
    assert entry(directory, OTHER_PARTS).is_file()  # other entries are still cached on disk
    assert cache.store().directory == directory


def test_a_write_over_a_link_never_writes_through_it_nor_takes_its_mode(
        directory: Path, report: ModelReport, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o666)
    entry(directory).symlink_to(victim)
    previous = os.umask(0o022)
    try:
        with pytest.warns(cache.CacheWarning, match="not a JSON entry"):
            value = cache.cached("model", PARTS, Computation(report))
    finally:
        os.umask(previous)
    assert same(value, report)
    assert victim.read_text() == "precious"
    assert not entry(directory).is_symlink()
    assert entry(directory).stat().st_mode & 0o777 == 0o644
    assert_rewritten(directory, report)


def test_a_link_to_a_good_entry_inside_the_cache_is_used(directory: Path,
                                                         report: ModelReport) -> None:
    key = cache.cache_key("model", PARTS)
    good = cache.encode_entry("model", key, PARTS, report)
    assert good is not None
    (directory / "kept.json").write_bytes(good)
    entry(directory).symlink_to("kept.json")
    compute = Computation(report)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)
        assert same(cache.cached("model", PARTS, compute), report)
    assert compute.calls == 0


def test_a_probe_name_squatted_by_a_directory_does_not_disable_the_cache(
        tmp_path: Path, directory: Path, report: ModelReport) -> None:
    place = tmp_path / "shared"
    place.mkdir()
    (place / f".probe-{os.getpid()}{cache.SUFFIX}").mkdir()  # the probe's old, fixed name
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)
        cache.configure(place)
        cache.cached("model", PARTS, Computation(report))
    assert entry(place).is_file()
