"""The command line under hostile input: every bad argument is a usage error (exit 2) found
before a model loads, a damaged results file is refused (exit 3) with the reason, a NaN never
reaches a verdict, and nothing ends in a traceback or in exit 1, which means "regression"."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_cli as run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_circuits import cache
from pytest_circuits.cli import (
    EXIT_ANALYSIS,
    EXIT_OK,
    EXIT_REGRESSION,
    EXIT_USAGE,
    build_parser,
    diff_reports,
    load_reports,
    main,
)

TEACHER, GOOD, BRITTLE = "zoo:tiny-teacher", "zoo:tiny-student", "zoo:tiny-student-brittle"
NOWHERE = "zoo:no-such-student"  # loading it is exit 3: a refusal before it proves the order
FAST = ["--n-prompts", "8", "-q", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("restore_cache_settings")



def refused(code: int, err: str, *words: str) -> None:
    assert code == EXIT_USAGE, err
    assert err.startswith("pytest-circuits: error: ") and "Traceback" not in err
    for word in words:
        assert word in err, err


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``compare --json`` of the good and the brittle student (8 prompts)."""
    saved = dict(cache._settings)
    folder = tmp_path_factory.mktemp("results")
    files = {}
    for label, student in (("good", GOOD), ("brittle", BRITTLE)):
        files[label] = folder / f"{label}.json"
        code, _, err = run("compare", TEACHER, student, *FAST, "--cache-dir",
                           str(folder / "cache"), "--json", str(files[label]))
        assert code == EXIT_OK, err
    cache._settings.update(saved)
    return files


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["compare", TEACHER, NOWHERE, "--margin", "nan"], ["--margin", "finite", "nan"]),
        (["compare", TEACHER, NOWHERE, "--margin", "-1"], ["--margin", ">= 0", "-1.0"]),
        (["compare", TEACHER, NOWHERE, "--margin", "inf"], ["--margin", "inf"]),
        (["compare", TEACHER, NOWHERE, "--n-prompts", "20000"],
         ["--n-prompts must be at most 10,000, got 20000"]),
        (["compare", TEACHER, NOWHERE, "--seed", "-1"], ["--seed must be at least 0, got -1"]),
        (["calibrate", TEACHER, NOWHERE, "--strict", "--drop-margin", "nan"],
         ["--drop-margin must be a number in [0, 100]", "got nan"]),
        (["calibrate", TEACHER, NOWHERE, "--strict", "--drop-margin", "-5"],
         ["--drop-margin", "-5.0"]),
        (["calibrate", TEACHER, NOWHERE, "--strict", "--drop-margin", "101"],
         ["--drop-margin", "101.0"]),
        (["calibrate", TEACHER, NOWHERE, "--strict", "--min-retained", "nan"],
         ["--min-retained must be a number in [0, 1000]", "percent"]),
        (["calibrate", TEACHER, NOWHERE, "--min-retained", "-1"], ["--min-retained", "-1.0"]),
        (["rank", TEACHER, NOWHERE, "--min-retained", "inf"], ["--min-retained", "inf"]),
        (["rank", TEACHER, NOWHERE, "--drop-margin", "nan"], ["--drop-margin", "nan"]),
    ],
)
def test_a_bad_number_is_a_usage_error_before_any_model_loads(argv: list[str],
                                                             words: list[str]) -> None:
    code, out, err = run(*argv, "-q", "--no-cache")
    refused(code, err, *words)
    assert NOWHERE not in err and out == ""


@pytest.mark.parametrize("option", ["--max-alignment-drop", "--max-severity-increase",
                                    "--max-drop-increase", "--max-retained-drop",
                                    "--influence-change"])
@pytest.mark.parametrize("bad", ["nan", "-1", "inf"])
def test_a_nan_negative_or_infinite_diff_tolerance_is_a_usage_error(
        results: dict[str, Path], option: str, bad: str) -> None:
    code, out, err = run("diff", str(results["good"]), str(results["brittle"]), option, bad)
    refused(code, err, option, "finite number >= 0")
    assert "regression" not in out


def test_every_numeric_option_has_a_rule() -> None:
    """A numeric option added later without a rule would let a NaN through again."""
    from pytest_circuits.cli import _number_rules

    ruled = {attribute for attribute, _, _ in _number_rules()}
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    numeric = {a.dest for sub in commands.choices.values() for a in sub._actions
               if a.type in (int, float)}
    assert numeric and numeric <= ruled, numeric - ruled


# ----------------------------------------------------------------------------- device, dtype


def test_an_unknown_device_is_a_usage_error_not_a_torch_traceback() -> None:
    code, _, err = run("compare", TEACHER, NOWHERE, "--device", "banana", "--no-cache", "-q")
    refused(code, err, "--device 'banana' is not a device", "cuda:N")


def test_a_gpu_this_machine_does_not_have_is_a_usage_error() -> None:
    import torch

    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    code, _, err = run("compare", TEACHER, NOWHERE, "--device", device, "--no-cache", "-q")
    refused(code, err, f"--device {device}")


def test_an_unknown_dtype_is_a_usage_error() -> None:
    code, _, err = run("compare", TEACHER, NOWHERE, "--dtype", "garbage", "--no-cache", "-q")
    refused(code, err, "--dtype 'garbage'", "float32, float16, bfloat16")


# ----------------------------------------------------------------------------- output paths


@pytest.mark.parametrize(("name", "problem"), [
    ("missing/out.json", "its folder"),
    ("folder", "it is a directory"),
])
@pytest.mark.parametrize("option", ["--json", "--html"])
def test_an_output_path_that_cannot_be_written_is_refused_first(
        tmp_path: Path, option: str, name: str, problem: str) -> None:
    (tmp_path / "folder").mkdir()
    target = tmp_path / name
    code, _, err = run("compare", TEACHER, NOWHERE, option, str(target), "--no-cache", "-q")
    refused(code, err, option, str(target), problem)


def test_json_and_html_at_one_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "report"
    code, _, err = run("compare", TEACHER, NOWHERE, "--json", str(path), "--html",
                       str(tmp_path / "." / "report"), "--no-cache", "-q")
    refused(code, err, "is the same file as --json")


def test_a_hard_link_to_another_output_is_the_same_file(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text("{}")
    os.link(first, tmp_path / "b.html")
    code, _, err = run("compare", TEACHER, NOWHERE, "--json", str(first), "--html",
                       str(tmp_path / "b.html"), "--no-cache", "-q")
    refused(code, err, "is the same file as --json")


def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    task = tmp_path / "mine.yaml"
    task.write_text("name: mine\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code, _, err = run("compare", TEACHER, NOWHERE, "--task", str(task), "--html", str(task),
                       "--no-cache", "-q")
    refused(code, err, f"--html {task} is --task {task}", "destroy an input")
    assert task.read_text() == "name: mine\n"
    code, _, err = run("compare", TEACHER, str(model), "--json", str(model / "config.json"),
                       "--no-cache", "-q")
    refused(code, err, "the model file", "config.json")
    code, _, err = run("compare", TEACHER, str(model), "--json", str(model), "--no-cache", "-q")
    refused(code, err, "it is a directory")


# ----------------------------------------------------------------------------- the cache


def test_an_explicit_cache_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    code, _, err = run("compare", TEACHER, NOWHERE, "--cache-dir", str(blocker), "-q")
    refused(code, err, f"--cache-dir {blocker} cannot hold the analysis cache", "--no-cache")


@pytest.mark.slow
def test_a_default_cache_path_blocked_by_a_file_warns_and_runs_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    monkeypatch.chdir(tmp_path)
    Path(".pytest_cache").write_text("not a folder")
    code, out, err = run("compare", TEACHER, GOOD, *FAST, "--json", "out.json")
    assert code == EXIT_OK, err
    assert ("pytest-circuits: warning: the analysis cache .pytest_cache/d/circuits cannot be "
            "used") in err and "running without the disk cache" in err
    assert not [w for w in recwarn if "cache" in str(w.message)]  # one clear line, no warning
    assert load_reports("out.json") and Path(".pytest_cache").read_text() == "not a folder"


# ----------------------------------------------------------------------------- crashes


def test_an_unexpected_error_is_exit_3_with_a_line_not_a_traceback(
        results: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: Any) -> Any:
        raise RuntimeError("something broke")

    monkeypatch.setattr("pytest_circuits.cli.diff_reports", crash)
    code, _, err = run("diff", str(results["good"]), str(results["good"]))
    assert code == EXIT_ANALYSIS
    assert err == ("pytest-circuits: internal error: RuntimeError: something broke; rerun with "
                   "--traceback and report it\n")
    with pytest.raises(RuntimeError):
        main(["--traceback", "diff", str(results["good"]), str(results["good"])])


# ----------------------------------------------------------------------------- damaged results


def _damaged(results: dict[str, Path], tmp_path: Path, *path: Any, value: Any) -> Path:
    """The good results file with the value at ``path`` in its report replaced."""
    document = json.loads(results["good"].read_text())
    node = document["reports"][0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = tmp_path / "damaged.json"
    target.write_text(json.dumps(document))
    return target


@pytest.mark.parametrize(("path", "value", "problem"), [
    (("alignment", "score"), float("nan"), "alignment.score is nan, not a finite number"),
    (("alignment", "weighted_score"), float("inf"), "alignment.weighted_score is inf"),
    (("student", "performance", "mean_logit_diff"), float("nan"), "could not be read back"),
    (("alignment", "pairs", 0, "similarity"), "0.9", "similarity is '0.9', not a number"),
    (("student", "brittleness", "severity"), 5.0, "severity: 5.0 is outside [0, 1]"),
    (("student", "brittleness", "worst_drop"), 1e308, "worst_drop: max_single_drop: 1e+308"),
    (("alignment", "score"), 1e308, "alignment: 1e+308 is outside [-1, 1]"),
    (("discarded",), [{"teacher": ["L0H1"]}], "could not be read back"),
    (("teacher", "sweep", "effects"), {"L0H0": 1}, "could not be read back"),
])
def test_a_damaged_metric_is_refused_not_compared(results: dict[str, Path], tmp_path: Path,
                                                  path: tuple[Any, ...], value: Any,
                                                  problem: str) -> None:
    damaged = _damaged(results, tmp_path, *path, value=value)
    for argv in (("diff", str(results["good"]), str(damaged)),
                 ("diff", str(damaged), str(results["brittle"]))):
        code, out, err = run(*argv)
        assert code == EXIT_ANALYSIS, (out, err)
        assert f"{damaged}: report 1 of 1" in err and problem in err, err
        assert "regression" not in out and "Traceback" not in err


def test_a_nan_metric_is_a_regression_for_a_caller_of_diff_reports(
        results: dict[str, Path]) -> None:
    (old,) = load_reports(str(results["good"]))
    new = dataclasses.replace(old, alignment=dataclasses.replace(old.alignment,
                                                                 score=float("nan")))
    args = build_parser().parse_args(["diff", "a", "b"])
    summary, _ = diff_reports(old, new, args)
    verdicts = {c.what: c.regressed for c in summary}
    assert verdicts["alignment A"] is True and verdicts["weighted alignment"] is False


# ----------------------------------------------------------------------------- fuzzing diff

#: Keys diff reads, so half of the mutations land where a verdict comes from.
READ_KEYS = {"format", "reports", "kind", "task", "teacher", "student", "model", "name",
             "alignment", "score", "weighted_score", "pairs", "similarity", "behavior_retained",
             "discarded", "brittleness", "severity", "worst_drop", "mean_drop",
             "worst_component", "sweep", "effects", "drop", "influence", "fingerprint",
             "n_prompts", "analysis"}

replacements = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5.0, -1.0, 0, "", "L0H0", "nan"]),
    st.text(max_size=5), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    children = (node.items() if isinstance(node, dict)
                else enumerate(node) if isinstance(node, list) else ())
    for key, child in children:
        yield from _nodes(child, (*path, key))


def _mutate(document: Any, data: st.DataObject) -> Any:
    paths = [path for path, _ in _nodes(document)]
    read = [p for p in paths if p and p[-1] in READ_KEYS]
    path = data.draw(st.sampled_from(read) if read and data.draw(st.booleans())
                     else st.sampled_from(paths))
    action = data.draw(st.sampled_from(["delete", "replace", "wrap in a list",
                                        "wrap in a mapping"]))
    if not path:
        return data.draw(replacements) if action != "wrap in a list" else [document]
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "replace":
        parent[key] = data.draw(replacements)
    elif action == "wrap in a list":
        parent[key] = [parent[key]]
    else:
        parent[key] = {"value": parent[key]}
    return document


@pytest.fixture(scope="module")
def valid_document(results: dict[str, Path]) -> Any:
    return json.loads(results["good"].read_text())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_diff_of_a_mutated_results_file_is_a_verdict_or_a_reasoned_refusal(
        results: dict[str, Path], valid_document: Any, tmp_path: Path,
        data: st.DataObject) -> None:
    document = copy.deepcopy(valid_document)
    for _ in range(data.draw(st.integers(1, 3))):
        document = _mutate(document, data)
    mutated = tmp_path / "mutated.json"
    mutated.write_text(json.dumps(document))
    for argv in (("diff", str(results["good"]), str(mutated)),
                 ("diff", str(mutated), str(results["good"]))):
        code, out, err = run(*argv)  # an exception here fails the test: never a traceback
        assert code in (EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_ANALYSIS), code
        if code in (EXIT_OK, EXIT_REGRESSION):
            assert "regression(s) beyond tolerance" in out
            for report in load_reports(str(mutated)):  # what was compared is a sound report
                assert math.isfinite(report.student.brittleness.severity if hasattr(
                    report, "alignment") else report.brittleness.severity)
        else:
            assert err.startswith("pytest-circuits: error: ") and "internal error" not in err
            assert str(mutated) in err or "measured differently" in err, err


# ----------------------------------------------------------------------------- task files


@pytest.fixture
def renamed_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A task file whose ``name:`` (counting) is not its path (tasks/my-task.yaml)."""
    from pytest_circuits.tasks import builtin_task, save_task_file

    monkeypatch.chdir(tmp_path)
    task = dataclasses.replace(builtin_task("numerals", n_prompts=8, seed=0), name="counting")
    Path("tasks").mkdir()
    save_task_file(task, Path("tasks/my-task.yaml"))
    return "tasks/my-task.yaml"


@pytest.mark.slow
def test_calibrate_names_a_task_file_by_its_path_so_the_block_runs_as_pasted(
        renamed_task: str) -> None:
    from pytest_circuits.gatefile import load_gate_file

    code, out, err = run("calibrate", TEACHER, GOOD, "--task", renamed_task, *FAST,
                         "--cache-dir", "cache")
    assert code == EXIT_OK, err
    assert "teacher zoo:tiny-teacher on task 'counting (tasks/my-task.yaml)'" in out
    block = out.split("# ---- paste into circuits.yaml ----\n", 1)[1]
    gates = yaml.safe_load(block)["gates"]
    assert {g["task"] for g in gates} == {renamed_task}
    assert [g["name"] for g in gates] == [
        "counting-behaviour", "counting-severity", "counting-no-critical-head",
        "counting-aligned"]
    Path("circuits.yaml").write_text(block)
    assert {spec.task for spec in load_gate_file(Path("circuits.yaml"))} == {renamed_task}


@pytest.mark.slow
def test_rank_reads_a_task_file_whose_name_is_not_its_path(renamed_task: str) -> None:
    code, out, err = run("rank", TEACHER, BRITTLE, GOOD, "--task", renamed_task, *FAST,
                         "--cache-dir", "cache")
    assert code == EXIT_OK, err
    assert f"1. {GOOD}: passes every calibrated threshold; above {BRITTLE}" in out
    assert "- counting: ablating head L0H3" in out
