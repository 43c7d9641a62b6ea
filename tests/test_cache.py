"""The analysis cache as a hostile user meets it: a planted pickle never runs, a flipped byte, a
torn file, an entry filed under another key or a broken directory all give the value a fresh run
gives (recomputed, never a crash), and an unusable directory warns once and never fails a gate."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_circuits import cache
from pytest_circuits.analysis.ablation import SweepResult
from pytest_circuits.analysis.comparison import ModelReport, model_report
from pytest_circuits.models import load_model
from pytest_circuits.tasks import builtin_task

PARTS = {"name": "zoo:tiny-student", "model": "sha-of-weights", "task": "numerals", "seed": 0}
OTHER_PARTS = {**PARTS, "seed": 1}


@pytest.fixture(scope="module")
def report() -> ModelReport:
    """A real ModelReport (zoo student, numerals, heads only: a second of work)."""
    model = load_model("zoo:tiny-student")
    return model_report(model, builtin_task("numerals", n_prompts=16), components="heads")


@pytest.fixture(scope="module")
def other_report() -> ModelReport:
    model = load_model("zoo:tiny-student-brittle")
    return model_report(model, builtin_task("numerals", n_prompts=16), components="heads")


class Computation:
    """A compute function that counts its calls and returns a fixed result."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A fresh on-disk cache for one test; the session's cache settings are put back after."""
    saved = dict(cache._settings)
    cache.forget()
    cache.configure(tmp_path / "cache")
    yield tmp_path / "cache"
    cache.forget()
    cache._settings.update(saved)


def fresh_session() -> None:
    """What a new pytest run sees: nothing in memory, the same directory on disk."""
    cache.forget()


def data_of(value: Any) -> Any:
    return json.loads(json.dumps(value.to_dict()))


def assert_same_result(expected: Any, actual: Any) -> None:
    assert type(actual) is type(expected)
    assert cache._same_data(data_of(actual), data_of(expected))


def only_entry(directory: Path) -> Path:
    (entry,) = [p for p in directory.iterdir() if not p.name.startswith(".")]
    return entry


def cached_no_warning(parts: dict[str, Any], compute: Computation) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)
        return cache.cached("model", parts, compute)


# --------------------------------------------------------------------------- the normal path


def test_an_entry_is_json_that_reads_back_to_the_same_typed_result(directory: Path,
                                                                   report: ModelReport) -> None:
    compute = Computation(report)
    assert cache.cached("model", PARTS, compute) is report
    entry = only_entry(directory)
    assert entry.suffix == ".json"
    stored = json.loads(entry.read_text())
    assert stored["body"]["type"] == "report" and stored["body"]["kind"] == "model"
    assert stored["body"]["parts"] == PARTS
    fresh_session()
    again = cached_no_warning(PARTS, compute)
    assert compute.calls == 1  # the second session read the entry instead of recomputing
    assert_same_result(report, again)
    assert again.brittleness.severity == report.brittleness.severity


def test_a_sweep_result_with_nan_round_trips(directory: Path, report: ModelReport) -> None:
    effect = dataclasses.replace(report.sweep.effects[0], influence=math.nan)
    sweep = dataclasses.replace(report.sweep, effects=[effect, *report.sweep.effects[1:]])
    compute = Computation(sweep)
    cache.cached("sweep", PARTS, compute)
    fresh_session()
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)
        again = cache.cached("sweep", PARTS, compute)
    assert compute.calls == 1 and isinstance(again, SweepResult)
    assert math.isnan(again.effects[0].influence)
    assert_same_result(sweep, again)


def test_a_value_json_cannot_hold_stays_in_memory(directory: Path) -> None:
    compute = Computation({"not": "a result type"})
    assert cache.cached("model", PARTS, compute) == {"not": "a result type"}
    assert not [p for p in directory.iterdir() if not p.name.startswith(".")]


def test_no_cache_computes_every_time(directory: Path, report: ModelReport) -> None:
    cache.configure(None, enabled=False)
    compute = Computation(report)
    cache.cached("model", PARTS, compute)
    cache.cached("model", PARTS, compute)
    assert compute.calls == 2


def test_entry_files_get_the_users_permissions(directory: Path, report: ModelReport) -> None:
    previous = os.umask(0o022)
    try:
        cache.cached("model", PARTS, Computation(report))
    finally:
        os.umask(previous)
    assert only_entry(directory).stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- nothing foreign runs


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_never_unpickled(directory: Path, report: ModelReport,
                                             tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))  # the payload does what it says when unpickled
    assert probe.exists()
    key = cache.cache_key("model", PARTS)
    directory.mkdir(parents=True, exist_ok=True)
    cache.entry_path(directory, "model", key).write_bytes(payload)
    (directory / f"model-{key[:32]}.pkl").write_bytes(payload)  # where older releases looked
    compute = Computation(report)
    with pytest.warns(cache.CacheWarning, match="not a JSON entry"):
        value = cache.cached("model", PARTS, compute)
    assert not marker.exists()
    assert compute.calls == 1
    assert_same_result(report, value)
    fresh_session()  # and the planted file was replaced by a good entry
    assert_same_result(report, cached_no_warning(PARTS, compute))
    assert compute.calls == 1 and not marker.exists()


def test_an_entry_of_an_unknown_type_is_recomputed(directory: Path, report: ModelReport) -> None:
    compute = Computation(report)
    cache.cached("model", PARTS, compute)
    entry = only_entry(directory)
    stored = json.loads(entry.read_text())
    stored["body"]["type"] = "pickle"
    stored["sha256"] = cache._checksum(stored["body"])  # a consistent entry, but a type no
    entry.write_bytes(cache._canonical(stored))  # reader is registered for
    fresh_session()
    with pytest.warns(cache.CacheWarning, match="unknown result type"):
        value = cache.cached("model", PARTS, compute)
    assert compute.calls == 2
    assert_same_result(report, value)


# --------------------------------------------------------------------------- damaged entries

DAMAGE = settings(max_examples=30, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


@DAMAGE
@given(data=st.data())
def test_a_flipped_byte_anywhere_is_detected_and_recomputed(
    directory: Path, report: ModelReport, data: st.DataObject
) -> None:
    good = cache.encode_entry("model", cache.cache_key("model", PARTS), PARTS, report)
    assert good is not None
    position = data.draw(st.integers(0, len(good) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != good[position]), label="byte")
    damaged = good[:position] + bytes([value]) + good[position + 1 :]
    key = cache.cache_key("model", PARTS)
    directory.mkdir(parents=True, exist_ok=True)
    cache.entry_path(directory, "model", key).write_bytes(damaged)
    fresh_session()
    compute = Computation(report)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cache.CacheWarning)
        result = cache.cached("model", PARTS, compute)
    # recomputed, unless the flip did not change what the file says ('e' to 'E' in a float)
    unchanged = cache._same_data(json.loads(good), _parsed_or_none(damaged))
    assert compute.calls == 1 or unchanged
    assert_same_result(report, result)


def _parsed_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


@DAMAGE
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_entry_is_recomputed(directory: Path, report: ModelReport,
                                         cut: float) -> None:
    key = cache.cache_key("model", PARTS)
    good = cache.encode_entry("model", key, PARTS, report)
    assert good is not None
    directory.mkdir(parents=True, exist_ok=True)
    cache.entry_path(directory, "model", key).write_bytes(good[: int(cut * len(good))])
    fresh_session()
    compute = Computation(report)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cache.CacheWarning)
        result = cache.cached("model", PARTS, compute)
    assert compute.calls == 1
    assert_same_result(report, result)


def test_an_entry_filed_under_another_key_is_not_used(directory: Path, report: ModelReport,
                                                      other_report: ModelReport) -> None:
    cache.cached("model", PARTS, Computation(report))
    entry = only_entry(directory)
    other_key = cache.cache_key("model", OTHER_PARTS)
    # an intact entry (its checksum holds) copied to the file name of another key
    cache.entry_path(directory, "model", other_key).write_bytes(entry.read_bytes())
    fresh_session()
    compute = Computation(other_report)
    with pytest.warns(cache.CacheWarning, match="stored key"):
        value = cache.cached("model", OTHER_PARTS, compute)
    assert compute.calls == 1
    assert_same_result(other_report, value)
    assert value.model.name != report.model.name


def test_an_entry_whose_stored_parts_differ_is_not_used(directory: Path, report: ModelReport,
                                                        other_report: ModelReport) -> None:
    key = cache.cache_key("model", PARTS)
    lying = cache.encode_entry("model", key, OTHER_PARTS, report)  # right key, wrong fields
    assert lying is not None
    directory.mkdir(parents=True, exist_ok=True)
    cache.entry_path(directory, "model", key).write_bytes(lying)
    compute = Computation(other_report)
    with pytest.warns(cache.CacheWarning, match="stored parts"):
        value = cache.cached("model", PARTS, compute)
    assert compute.calls == 1
    assert_same_result(other_report, value)


def test_an_unreadable_entry_is_recomputed(directory: Path, report: ModelReport,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache.cached("model", PARTS, Computation(report))
    fresh_session()
    real = os.open

    def refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(cache.SUFFIX) and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    compute = Computation(report)
    assert_same_result(report, cached_no_warning(PARTS, compute))
    assert compute.calls == 1


# --------------------------------------------------------------------------- unusable directories


def test_a_directory_that_is_a_file_warns_once_and_gates_still_get_values(
    tmp_path: Path, directory: Path, report: ModelReport, other_report: ModelReport
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(cache.CacheWarning, match="cannot be used") as caught:
        cache.configure(blocker)
        first = cache.cached("model", PARTS, Computation(report))
        second = cache.cached("model", OTHER_PARTS, Computation(other_report))
    assert len([w for w in caught if issubclass(w.category, cache.CacheWarning)]) == 1
    assert_same_result(report, first)
    assert_same_result(other_report, second)
    assert blocker.read_text() == "a file where the cache directory should be"


def test_a_read_only_directory_warns_once(tmp_path: Path, directory: Path,
                                          report: ModelReport) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.configure(read_only)
            value = cache.cached("model", PARTS, Computation(report))
            cache.cached("model", OTHER_PARTS, Computation(report))
    finally:
        read_only.chmod(0o700)
    assert_same_result(report, value)
    warned = [w for w in caught if issubclass(w.category, cache.CacheWarning)]
    # root writes through 0500 (these tests may run as root): then there is nothing to warn about
    assert len(warned) == (0 if os.access(read_only, os.W_OK) and os.geteuid() == 0 else 1)


def test_a_directory_refusing_writes_warns_once(tmp_path: Path, directory: Path,
                                                report: ModelReport,
                                                other_report: ModelReport,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied (simulated read-only directory)")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.warns(cache.CacheWarning, match="Permission denied") as caught:
        cache.configure(tmp_path / "refusing")
        first = cache.cached("model", PARTS, Computation(report))
        second = cache.cached("model", OTHER_PARTS, Computation(other_report))
    assert len([w for w in caught if issubclass(w.category, cache.CacheWarning)]) == 1
    assert_same_result(report, first)
    assert_same_result(other_report, second)


def test_a_disk_that_fills_up_mid_session_warns_once(directory: Path, report: ModelReport,
                                                     other_report: ModelReport,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.warns(cache.CacheWarning, match="No space left") as caught:
        first = cache.cached("model", PARTS, Computation(report))
        second = cache.cached("model", OTHER_PARTS, Computation(other_report))
    assert len([w for w in caught if issubclass(w.category, cache.CacheWarning)]) == 1
    assert_same_result(report, first)
    assert_same_result(other_report, second)
    assert not [p for p in directory.iterdir() if not p.name.startswith(".")]
