"""The gates' sweep method: ``method="exact"|"auto"|None`` on the gates that ablate components,
``--circuits-method`` / ``circuits_method`` / the marker / YAML ``method:`` for a run, and the
default by size (``settings.AUTO_MIN_COMPONENTS``); what a result says about it; and an auto
sweep's thresholds in its cache key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import results_by_test

from pytest_circuits import cache
from pytest_circuits.analysis import ablation
from pytest_circuits.config import options as settings
from pytest_circuits.errors import CircuitAssertionError, GateConfigError
from pytest_circuits.gatefile import GateFileError, load_gate_file
from pytest_circuits.kinds import (
    assert_ablation_robust,
    assert_circuit_aligned,
    assert_mechanism_preserved,
)
from pytest_circuits.models import CircuitModel, ModelPair, load_model, load_pair
from pytest_circuits.recording import GateResult, recording


@pytest.fixture(scope="module")
def zoo_teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def zoo_pair(zoo_teacher: CircuitModel) -> ModelPair:
    return load_pair(zoo_teacher, load_model("zoo:tiny-student-brittle", device="cpu"))


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """Nothing memoised, nothing on disk, for one test; the session's settings put back after."""
    saved = dict(cache._settings)
    cache.forget()
    cache.configure(None, enabled=True)
    yield
    cache.forget()
    cache._settings.update(saved)


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> list[tuple[str, Any]]:
    """Every sweep actually run (not served from the cache), as (method, thresholds)."""
    calls: list[tuple[str, Any]] = []
    real = ablation.sweep

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs.get("method"), kwargs.get("thresholds")))
        return real(*args, **kwargs)

    monkeypatch.setattr(ablation, "sweep", counting)
    return calls


def run_gate(gate: Any, *args: Any, **kwargs: Any) -> tuple[GateResult, str]:
    """The gate's recorded result and its failure message ("" when it passed)."""
    got: list[GateResult] = []
    message = ""
    with recording(got.append):
        try:
            gate(*args, **kwargs)
        except CircuitAssertionError as exc:
            message = str(exc)
    assert len(got) == 1
    return got[0], message


def served(result: GateResult, role: str = "model") -> dict[str, Any]:
    return result.fingerprint["sweep_method"]["sweeps"][role]


# ----------------------------------------------------------------------------- auto = exact


def test_auto_gives_the_exact_verdict_and_blame_and_says_what_it_measured(
    zoo_teacher: CircuitModel, fresh_cache: None
) -> None:
    # severity 0.01 fails: three of the teacher's 20 components drop more than 20 points
    auto, auto_message = run_gate(assert_ablation_robust, zoo_teacher, "numerals",
                                  max_severity=0.01, method="auto")
    exact, exact_message = run_gate(assert_ablation_robust, zoo_teacher, "numerals",
                                    max_severity=0.01, method="exact")
    assert not auto.passed and not exact.passed
    assert [c.passed for c in auto.checks] == [c.passed for c in exact.checks]
    assert auto.values["severity"] == exact.values["severity"]
    assert auto.values["max_single_drop"] == exact.values["max_single_drop"]
    assert [b.component for b in auto.blame] == [b.component for b in exact.blame]
    assert [b.scores for b in auto.blame] == [b.scores for b in exact.blame]

    info = served(auto)
    # the screen left some values as bounded estimates: auto really ran, not an exact sweep
    assert info["method"] == "auto" and info["components"] == 20
    assert 0 < info["exact"] < 20 and info["bounded"] == 20 - info["exact"]
    assert info["estimated"] == info["bounded"] and info["mean_drop_bound"] > 0
    assert auto.fingerprint["method"] == "auto"
    assert auto.fingerprint["sweep_method"]["requested"] == "auto"
    assert auto.fingerprint["sweep_method"]["origin"] == "method='auto'"
    line = (f"zoo:tiny-teacher: auto: {info['exact']} of 20 exact, {info['bounded']} bounded")
    assert line in auto_message and line in auto.fingerprint["sweep_method"]["note"]
    assert "sweep method: auto (method='auto')" in auto_message

    assert served(exact) == {"model": "zoo:tiny-teacher", "method": "exact", "components": 20,
                             "exact": 20, "bounded": 0, "estimated": 0, "mean_drop_bound": 0.0}
    assert exact.fingerprint["method"] == "exact"
    assert "zoo:tiny-teacher: exact (20 of 20 values measured)" in exact_message


def test_pair_gates_with_auto_give_the_exact_verdicts(zoo_pair: ModelPair,
                                                      fresh_cache: None) -> None:
    by_method = {}
    for method in ("exact", "auto"):
        by_method[method] = (
            run_gate(assert_circuit_aligned, zoo_pair, "numerals", min_score=0.7, method=method),
            run_gate(assert_mechanism_preserved, zoo_pair, "numerals",
                     components=["L0H0", "MLP0", "L1H1"], min_influence=5.0, method=method),
        )
    for (exact, _), (auto, _) in zip(by_method["exact"], by_method["auto"], strict=True):
        assert [c.passed for c in auto.checks] == [c.passed for c in exact.checks]
        assert [(b.component, b.counterpart) for b in auto.blame] == [
            (b.component, b.counterpart) for b in exact.blame]
        assert auto.fingerprint["method"] == "auto" and exact.fingerprint["method"] == "exact"
    aligned = by_method["auto"][0][0]
    # the exact gate ran first, so its sweeps served the auto request: nothing swept twice
    assert served(aligned, "teacher")["method"] == "exact"
    assert served(aligned, "student")["method"] == "exact"
    mechanism = by_method["auto"][1][0]
    influences = {c.metric: c.value for c in mechanism.checks}
    exact_influences = {c.metric: c.value for c in by_method["exact"][1][0].checks}
    assert influences == exact_influences


def test_a_pair_gate_alone_sweeps_auto_with_compares_cut_points(
    zoo_pair: ModelPair, sweeps: list[tuple[str, Any]]
) -> None:
    result, message = run_gate(assert_mechanism_preserved, zoo_pair, "numerals",
                               components=["L0H0"], min_influence=5.0, method="auto")
    assert [m for m, _ in sweeps] == ["auto", "auto"]  # teacher and student, once each
    thresholds = sweeps[0][1]
    # the gate's min_influence, compare's tolerance and influential level; the dead floor's
    # decisions are settled one by one (bounds.compare_needs)
    assert thresholds.drop == (5.0, 10.0, 20.0) and thresholds.top_k == 5
    assert served(result, "teacher")["method"] == "auto"
    assert "teacher zoo:tiny-teacher: auto: " in message or result.passed
    assert "teacher zoo:tiny-teacher: auto: " in result.fingerprint["sweep_method"]["note"]


# ----------------------------------------------------------------------------- the default


def test_the_default_switches_to_auto_at_auto_min_components(
    zoo_teacher: CircuitModel, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    assert settings.AUTO_MIN_COMPONENTS == 1000
    below, _ = run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_severity=1.0)
    assert below.passed
    assert below.fingerprint["method"] == "exact" and served(below)["method"] == "exact"
    assert below.fingerprint["sweep_method"]["requested"] is None
    assert below.fingerprint["sweep_method"]["origin"].startswith("default: auto for a model of "
                                                                  "1,000 components or more")

    cache.forget()
    monkeypatch.setattr(settings, "AUTO_MIN_COMPONENTS", 20)  # the teacher has exactly 20
    above, _ = run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_severity=1.0)
    assert above.fingerprint["method"] == "auto" and served(above)["method"] == "auto"
    assert served(above)["bounded"] > 0
    assert "default: auto for a model of 20 components" in above.fingerprint["sweep_method"][
        "origin"]

    cache.forget()
    monkeypatch.setattr(settings, "AUTO_MIN_COMPONENTS", 21)
    again, _ = run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_severity=1.0)
    assert served(again)["method"] == "exact"


def test_the_default_is_per_model_in_a_pair(zoo_pair: ModelPair, monkeypatch: pytest.MonkeyPatch,
                                            sweeps: list[tuple[str, Any]]) -> None:
    monkeypatch.setattr(settings, "AUTO_MIN_COMPONENTS", 15)  # teacher 20, student 10
    result, _ = run_gate(assert_circuit_aligned, zoo_pair, "numerals", min_score=0.1)
    assert sorted(m for m, _ in sweeps) == ["auto", "exact"]
    assert served(result, "teacher")["method"] == "auto"
    assert served(result, "student")["method"] == "exact"
    assert result.fingerprint["method"] == "auto"


# ----------------------------------------------------------------------------- cache keys


def test_one_auto_sweep_serves_every_threshold_and_an_exact_sweep_serves_auto(
    zoo_teacher: CircuitModel, sweeps: list[tuple[str, Any]]
) -> None:
    from pytest_circuits.analysis import bounds

    run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_single_drop=90.0,
             method="auto")
    run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_single_drop=90.0,
             method="auto")
    assert len(sweeps) == 1  # the same thresholds share one auto sweep
    # another limit: the stored sweep measures what decides it, in place; no second screen
    other, _ = run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_single_drop=15.0,
                        method="auto")
    assert [m for m, _ in sweeps] == ["auto"]
    assert [t.drop for _, t in sweeps] == [(20.0, 90.0)]
    assert served(other)["method"] == "auto"
    from pytest_circuits.analysis.store import as_task, sweep_result
    from pytest_circuits.config.options import GateThresholds
    stored = sweep_result(zoo_teacher, as_task("numerals", None, None, zoo_teacher),
                          method="auto",
                          thresholds=GateThresholds(drop=(15.0, 20.0)))
    assert bounds.threshold_needs(stored, GateThresholds(drop=(15.0, 20.0))) == set()

    run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_single_drop=15.0,
             method="exact")
    assert [m for m, _ in sweeps] == ["auto", "exact"]
    # an exact sweep decides any verdict: an auto gate with new thresholds reuses it
    reused, _ = run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_single_drop=40.0,
                         max_mean_drop=30.0, method="auto")
    assert len(sweeps) == 2
    assert served(reused)["method"] == "exact" and served(reused)["exact"] == 20
    assert reused.fingerprint["method"] == "auto"  # what the gate ran by, for its baseline


def test_an_exact_sweep_on_disk_serves_an_auto_gate_of_a_new_session(
    zoo_teacher: CircuitModel, sweeps: list[tuple[str, Any]], tmp_path: Path
) -> None:
    cache.configure(tmp_path / "cache")
    run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_severity=1.0, method="exact")
    cache.forget()  # a new session: only the disk entry is left
    result, _ = run_gate(assert_ablation_robust, zoo_teacher, "numerals", max_severity=1.0,
                         method="auto")
    assert [m for m, _ in sweeps] == ["exact"]
    assert served(result)["method"] == "exact"


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("method", "words"),
    [
        ("attribution", "attribution estimates carry no bound"),
        ("causal", "'causal' is a matching strategy: write matching='causal'"),
        ("fast", "pass method='exact' or method='auto'"),
        ("Auto", "(did you mean 'auto'?)"),
        (1, "method=1 is not a sweep method"),
    ],
)
def test_a_bad_gate_method_is_refused_before_any_sweep(
    zoo_pair: ModelPair, sweeps: list[tuple[str, Any]], method: Any, words: str
) -> None:
    for gate, kwargs in ((assert_ablation_robust, {"max_severity": 0.1}),
                         (assert_circuit_aligned, {"min_score": 0.5}),
                         (assert_mechanism_preserved, {"components": ["L0H0"]})):
        with pytest.raises(GateConfigError) as raised:
            gate(zoo_pair, "numerals", method=method, **kwargs)
        assert words in str(raised.value)
        assert str(raised.value).startswith(gate.__name__)
    assert sweeps == []


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--circuits-method=fast"], "",
         "--circuits-method: method 'fast' is not a sweep method; use exact or auto"),
        (["--circuits-method=attribution"], "",
         "attribution estimates carry no bound"),
        ([], "circuits_method = exac\n",
         "ini key circuits_method: method 'exac' is not a sweep method (did you mean 'exact'?)"),
    ],
)
def test_a_bad_run_method_is_a_usage_error(pytester: pytest.Pytester, args: list[str], ini: str,
                                           message: str) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_the_option_is_documented(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    assert "--circuits-method=METHOD" in help_text and "circuits_method" in help_text
    assert "1,000 components" in help_text
    assert "method=" in pytester.runpytest("--markers").stdout.str()


# ----------------------------------------------------------------------------- a run's method


RUN_TESTS = """
import pytest
from pytest_circuits import assert_ablation_robust, load_model

def gate(**kwargs):
    assert_ablation_robust(load_model("zoo:tiny-teacher", device="cpu"), "numerals",
                           max_severity=1.0, **kwargs)

def test_unmarked():
    gate()

@pytest.mark.circuits(method="exact")
def test_marked_exact():
    gate()

@pytest.mark.circuits(method="exact")
def test_own_argument():
    gate(method="auto")
"""


@pytest.fixture
def run_in(pytester: pytest.Pytester, fresh_cache: None) -> Any:
    pytester.makepyfile(test_run=RUN_TESTS)

    def run(*args: str, ini: str = "") -> tuple[pytest.RunResult, dict[str, Any]]:
        pytester.makeini(f"[pytest]\n{ini}")
        result = pytester.runpytest("--circuits-no-cache", "--circuits-json=out.json", *args)
        document = json.loads((pytester.path / "out.json").read_text())
        return result, {name: r["fingerprint"]["sweep_method"]
                        for name, r in results_by_test(document).items()}

    return run


def test_the_ini_key_the_marker_and_the_option_reach_the_gates(run_in: Any) -> None:
    result, methods = run_in(ini="circuits_method = auto\n")
    assert result.ret == pytest.ExitCode.OK
    assert methods["test_unmarked"]["requested"] == "auto"
    assert methods["test_unmarked"]["origin"] == "ini key circuits_method"
    assert methods["test_unmarked"]["sweeps"]["model"]["method"] == "auto"
    assert methods["test_marked_exact"]["requested"] == "exact"
    assert methods["test_marked_exact"]["origin"] == "@pytest.mark.circuits(method=...)"
    assert methods["test_marked_exact"]["sweeps"]["model"]["method"] == "exact"
    assert methods["test_own_argument"]["origin"] == "method='auto'"
    # a passing gate has no message: the summary says which gates an auto sweep served
    summary = result.stdout.str()
    assert "test_run.py::test_unmarked [ablation_robust] sweep method: auto (ini key " in summary
    assert "test_run.py::test_marked_exact [ablation_robust] sweep method" not in summary

    result, methods = run_in("--circuits-method=exact", ini="circuits_method = auto\n")
    assert methods["test_unmarked"]["requested"] == "exact"
    assert methods["test_unmarked"]["origin"] == "--circuits-method"
    assert methods["test_unmarked"]["sweeps"]["model"]["method"] == "exact"
    assert "sweep method: auto (ini key" not in result.stdout.str()


# ----------------------------------------------------------------------------- YAML


GATE_FILE = """\
pairs:
  brittle: {teacher: zoo:tiny-teacher, student: zoo:tiny-student-brittle}
defaults:
  task: numerals
  method: exact
gates:
  - name: aligned
    pair: brittle
    circuit_aligned: {min_score: 0.5, method: auto}
  - name: robust
    pair: brittle
    ablation_robust: {max_severity: 0.5}
  - name: behavior
    pair: brittle
    behavior_preserved: {min_retained: 50}
"""


def test_yaml_method_is_the_sweep_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "circuits.yaml"
    path.write_text(GATE_FILE)
    specs = {s.name: s for s in load_gate_file(path)}
    assert specs["aligned"].arguments["method"] == "auto"  # the gate's own beats defaults
    assert specs["robust"].arguments["method"] == "exact"  # from defaults
    assert "method" not in specs["behavior"].arguments  # it ablates nothing

    for bad, words in (("method: auto}", "method 'fast' is not one of exact, auto"),
                       ("method: auto}", "method: paper names a matching strategy")):
        value = "fast" if "fast" in words else "paper"
        path.write_text(GATE_FILE.replace(bad, f"method: {value}}}"))
        with pytest.raises(GateFileError) as raised:
            load_gate_file(path)
        assert f"{path}:9: " in str(raised.value) and words in str(raised.value)
    path.write_text(GATE_FILE.replace("behavior_preserved: {min_retained: 50}",
                                      "behavior_preserved: {min_retained: 50, method: auto}"))
    with pytest.raises(GateFileError, match="unknown key 'method'"):
        load_gate_file(path)


def test_the_command_line_takes_the_same_method() -> None:
    from pytest_circuits.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["compare", "zoo:a", "zoo:b"]).method is None  # the gates' rule
    assert parser.parse_args(["compare", "zoo:a", "zoo:b", "--method", "auto"]).method == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["rank", "zoo:a", "zoo:b", "--method", "attribution"])
