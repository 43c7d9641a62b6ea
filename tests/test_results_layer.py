"""The torch-free results layer and the one running context: typed results readable without
torch, the typed records gates keep in a result's fingerprint, and a context per session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_circuits import cache, progress
from pytest_circuits.config import context
from pytest_circuits.config.context import CacheStore, RunContext, RunSettings
from pytest_circuits.recording import GateResult, MetricCheck, record, recording, run_settings
from pytest_circuits.results import (
    TASK_ADAPTATION_KEY,
    RoleSweep,
    SweepMethodRecord,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_results_and_the_plugin_modules_import_without_torch() -> None:
    modules = ["pytest_circuits.results", "pytest_circuits.plugin", "pytest_circuits.cache",
               "pytest_circuits.output", "pytest_circuits.recording", "pytest_circuits.reporting",
               "pytest_circuits.config.context"]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'transformer_lens')"
        " if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_moved_names_are_the_same_objects_at_their_old_homes() -> None:
    from pytest_circuits import results
    from pytest_circuits.analysis import ablation, comparison, fingerprint, matching

    for name in ("ModelReport", "PairReport", "MatchedPair", "AmbiguousGroup", "Alignment",
                 "Discarded", "CompareSettings", "ReportFormatError", "report_from_dict"):
        assert getattr(comparison, name) is getattr(results, name), name
    for name in ("SweepResult", "ComponentEffect", "TaskPerformance", "GateThresholds",
                 "Screening", "SweepConfigError", "DEFAULT_MARGIN"):
        assert getattr(ablation, name) is getattr(results, name), name
    assert fingerprint.MethodFingerprint is results.MethodFingerprint
    assert matching.DEFAULT_MIN_STUDENT_INFLUENCE == results.CompareSettings().min_student_influence
    assert matching.DEFAULT_DIRECTION == results.DEFAULT_DIRECTION == "teacher_to_student"
    from pytest_circuits import recording

    assert recording.GateResult is results.GateResult and recording.Blame is results.Blame


# ----------------------------------------------------------------------------- typed records


#: What kinds/finish.record_method writes today, as plain data (the results file's JSON).
STORED_METHOD = {
    "requested": "auto",
    "origin": "method='auto'",
    "note": "sweep method: auto (method='auto'): student s: auto: 3 of 10 exact, 7 bounded",
    "sweeps": {"student": {"model": "s", "method": "auto", "components": 10, "exact": 3,
                           "bounded": 7, "estimated": 7, "mean_drop_bound": 0.4},
               "teacher": {"model": "t", "method": "exact", "components": 20, "exact": 20,
                           "bounded": 0, "estimated": 0, "mean_drop_bound": 0.0}},
    "settled_exactly": ["alignment"],
}


def _result(fingerprint: dict) -> GateResult:
    return GateResult("circuit_aligned", "t -> s", "ioi",
                      [MetricCheck("alignment", 0.9, 0.8, ">=")], fingerprint=fingerprint)


def test_a_stored_sweep_method_reads_as_its_typed_record() -> None:
    method = _result({"method": "auto", "sweep_method": STORED_METHOD}).sweep_method
    assert method is not None
    assert method.requested == "auto" and method.origin == "method='auto'"
    assert method.sweeps["student"] == RoleSweep("s", "auto", 10, 3, 7, 7, 0.4)
    assert method.sweeps["teacher"].exact == 20
    assert method.settled_exactly == ("alignment",)
    assert method.any_auto


def test_writing_a_sweep_method_keeps_the_results_json_byte_for_byte() -> None:
    written = _result({"method": "auto"})
    written.set_sweep_method(SweepMethodRecord.from_dict(STORED_METHOD))
    by_hand = _result({"method": "auto", "sweep_method": STORED_METHOD})
    assert json.dumps(written.to_dict()) == json.dumps(by_hand.to_dict())


def test_an_all_exact_record_is_not_auto_and_an_old_result_has_no_record() -> None:
    exact = {**STORED_METHOD, "sweeps": {"model": STORED_METHOD["sweeps"]["teacher"]}}
    assert not _result({"sweep_method": exact}).sweep_method.any_auto
    assert _result({"method": "exact"}).sweep_method is None  # stored before gates recorded it
    assert _result({"sweep_method": "garbled"}).sweep_method is None


def test_setting_a_record_leaves_a_shared_fingerprint_untouched() -> None:
    shared = {"method": "auto"}
    result = _result(shared)
    result.set_sweep_method(SweepMethodRecord("auto", "o", "n"))
    result.set_task_adaptation("adapted to the tokenizer")
    assert shared == {"method": "auto"}
    assert result.fingerprint[TASK_ADAPTATION_KEY] == "adapted to the tokenizer"


def test_the_task_adaptation_reads_empty_when_the_task_was_not_adapted() -> None:
    assert _result({}).task_adaptation == ""
    result = _result({})
    result.set_task_adaptation("")
    assert "task_adaptation" not in result.fingerprint
    read_back = GateResult.from_dict(json.loads(json.dumps(
        _result({"task_adaptation": "mapped 'Mary' to 'Anne'"}).to_dict())))
    assert read_back.task_adaptation == "mapped 'Mary' to 'Anne'"


# ----------------------------------------------------------------------------- the context


def test_recorder_settings_progress_and_cache_come_from_the_one_context() -> None:
    seen: list[GateResult] = []
    ticks: list[tuple[str, int, int]] = []
    store = CacheStore()
    running = RunContext(recorder=seen.append, settings=RunSettings(n_prompts=7, seed=3),
                         progress=lambda *tick: ticks.append(tick), cache=store)
    before = context.current()
    with context.using(running):
        record(_result({}))
        progress.report("m", 1, 2)
        assert run_settings() == RunSettings(n_prompts=7, seed=3)
        assert cache.store() is store
        cache.configure(None, enabled=False)
    assert context.current() is before
    assert len(seen) == 1 and ticks == [("m", 1, 2)]
    assert store.enabled is False and before.cache is not store


def test_the_old_entry_points_change_only_the_block_they_wrap() -> None:
    seen: list[GateResult] = []
    outside = context.current()
    with recording(seen.append):
        assert context.current().recorder is not None
        assert context.current().cache is outside.cache  # the session's cache is shared
        with context.changed(settings=RunSettings(seed=9)):
            assert run_settings().seed == 9
            record(_result({}))
        assert run_settings() == outside.settings
    assert context.current() is outside and len(seen) == 1


def test_install_refuses_what_is_not_a_context() -> None:
    with pytest.raises(TypeError, match="takes a RunContext, got dict"):
        context.install({"recorder": None})  # type: ignore[arg-type]


PROBE = '''
import json
from pytest_circuits import cache

def test_probe():
    calls = []
    cache.cached("probe", {"n": 1}, lambda: calls.append(1) or "value")
    settings = dict(cache._settings)
    with open("probe.jsonl", "a") as out:
        out.write(json.dumps({"computed": len(calls), "enabled": settings["enabled"],
                              "directory": str(settings["directory"])}) + "\\n")
'''


def test_sequential_sessions_in_one_process_share_no_cache(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_probe=PROBE)
    outside = context.current()
    saved = dict(cache._settings)
    for args in (["--circuits-cache-dir=one"], ["--circuits-cache-dir=two"],
                 ["--circuits-no-cache"]):
        pytester.runpytest_inprocess(*args).assert_outcomes(passed=1)
    runs = [json.loads(line) for line in (pytester.path / "probe.jsonl").read_text().splitlines()]
    # each session computes afresh (the first one's memo is gone) with its own settings
    assert [r["computed"] for r in runs] == [1, 1, 1]
    assert [Path(r["directory"]).name for r in runs[:2]] == ["one", "two"]
    assert [r["enabled"] for r in runs] == [True, True, False]
    # and the session running this test kept its own context and settings
    assert context.current() is outside and dict(cache._settings) == saved


# ----------------------------------------------------------------------------- writers


class _Plugins:
    def hasplugin(self, name: str) -> bool:
        return False


def test_a_run_has_one_writer_per_output_in_the_order_its_notes_print(tmp_path: Path) -> None:
    from pytest_circuits.reporting import Writer, configured_writers

    names = [w.name for w in configured_writers(_Plugins(), None, None)]
    assert names == ["junit", "pytest-html", "terminal"]
    writers = configured_writers(_Plugins(), tmp_path / "r.json", tmp_path / "r.html")
    assert [w.name for w in writers] == ["junit", "pytest-html", "json", "html", "terminal"]
    assert all(isinstance(w, Writer) for w in writers)


def test_the_html_writer_keeps_the_old_report_after_an_interruption(tmp_path: Path) -> None:
    from pytest_circuits.reporting import RunInfo
    from pytest_circuits.reporting.html_report import HtmlReport

    path = tmp_path / "report.html"
    notes = HtmlReport(path).finish(RunInfo(stopped="SIGTERM: stop", interrupted=True))
    assert notes == [f"HTML report {path} NOT written: the run was interrupted (SIGTERM: stop)"]
    assert not path.exists()
