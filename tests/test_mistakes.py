"""Mistakes that used to pass: a percentage written as a fraction, a bound that blocks an
identical copy of the teacher, a task name that is no task. Each is warned about or refused
before any model loads, by one rule in the registry (thresholds) or in the gate file reader and
the command line (task names)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits import kinds
from pytest_circuits.cli import EXIT_USAGE, main
from pytest_circuits.errors import GateConfigError
from pytest_circuits.gatefile import GateFileError, load_gate_file, task_problem
from pytest_circuits.kinds import KINDS
from pytest_circuits.kinds.registry import ThresholdWarning

TEACHER = "zoo:tiny-teacher"
NOWHERE = "zoo:no-such-student"  # loading it would fail with exit 3, not 2


class Untouchable:
    """A pair that fails any use: what is checked before a model loads never reads it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the gate read .{name} of its model")


def mistake(kind: str, threshold: str, value: float) -> str:
    return KINDS[kind].threshold(threshold).mistake(value, "gate")


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("value", "meant"), [(0.9, "90"), (0.5, "50"), (1, "100"),
                                              (0.015, "1.5")])
def test_a_percentage_written_as_a_fraction_is_pointed_out(value: float, meant: str) -> None:
    text = mistake("behavior_preserved", "min_retained", value)
    assert f"min_retained={value:g} is read as {value:g} percent" in text
    assert f"did you mean {meant}?" in text


@pytest.mark.parametrize("value", [0, 1.5, 50, 90, 100])
def test_a_plain_percentage_is_no_mistake(value: float) -> None:
    assert mistake("behavior_preserved", "min_retained", value) == ""
    assert mistake("behavior_preserved", "min_accuracy_retained", value) == ""


def test_every_percent_threshold_gets_the_same_rule() -> None:
    assert "did you mean 50?" in mistake("behavior_preserved", "min_accuracy_retained", 0.5)
    assert "did you mean 80?" in mistake("behavior_preserved", "min_answer_prob_retained", 0.8)


def test_a_negative_severity_increase_blocks_an_identical_copy() -> None:
    text = mistake("ablation_robust", "max_severity_increase", -0.01)
    assert "max_severity_increase=-0.01 blocks a student identical to its teacher" in text
    assert "LESS brittle than the teacher" in text and "write a value >= 0" in text
    assert mistake("ablation_robust", "max_severity_increase", 0) == ""
    assert mistake("ablation_robust", "max_severity_increase", 0.05) == ""


def test_a_floor_above_the_teacher_blocks_an_identical_copy() -> None:
    text = mistake("behavior_preserved", "min_retained", 101)
    assert "blocks a student identical to its teacher (which measures 100%)" in text
    assert "MORE capable" in text


@pytest.mark.parametrize(("kind", "threshold", "value"), [
    ("circuit_aligned", "min_score", 0.9),  # a score is a fraction: 0.9 is what was meant
    ("ablation_robust", "max_severity", 0.5),
    ("ablation_robust", "max_single_drop", 0.5),  # points, not a share of the teacher's
    ("shift_robust", "max_accuracy_gap", 0.1),
])
def test_thresholds_in_other_units_are_left_alone(kind: str, threshold: str,
                                                  value: float) -> None:
    assert mistake(kind, threshold, value) == ""


# ----------------------------------------------------------------------------- the gates


def test_the_gate_warns_before_it_reads_a_model_and_points_at_the_caller() -> None:
    with pytest.warns(ThresholdWarning, match=r"did you mean 90\?") as caught, \
            pytest.raises(TypeError, match="expected a ModelPair"):
        kinds.assert_behavior_preserved(Untouchable(), "numerals", min_retained=0.9)
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]


def test_a_negative_severity_increase_warns_before_the_gate_runs() -> None:
    # the warning comes first; then the gate refuses a single model for a pair-only threshold
    with pytest.warns(ThresholdWarning, match="LESS brittle"), \
            pytest.raises(GateConfigError, match="compares the student with its teacher"):
        kinds.assert_ablation_robust(Untouchable(), "numerals", max_severity_increase=-0.01)


def test_a_sensible_gate_warns_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThresholdWarning)
        with pytest.raises(TypeError, match="expected a ModelPair"):
            kinds.assert_behavior_preserved(Untouchable(), "numerals", min_retained=90)


# ----------------------------------------------------------------------------- gate files

GATE_FILE = """\
pairs:
  good: {{teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}}
gates:
  - name: behaviour
    pair: good
    task: {task}
    behavior_preserved: {{min_retained: {retained}}}
"""


def write(tmp_path: Path, task: str = "numerals", retained: float = 90) -> Path:
    path = tmp_path / "circuits.yaml"
    path.write_text(GATE_FILE.format(task=task, retained=retained))
    return path


def test_a_task_name_in_the_wrong_case_is_refused_when_the_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(GateFileError) as error:
        load_gate_file(write(tmp_path, task="IOI"))
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'circuits.yaml'}:6: gate 'behaviour': task 'IOI'")
    assert "did you mean 'ioi'?" in message and "numerals, numwords, ioi" in message


def test_a_misspelt_task_name_is_refused_with_the_closest_built_in(tmp_path: Path) -> None:
    with pytest.raises(GateFileError, match="did you mean 'numerals'"):
        load_gate_file(write(tmp_path, task="numeral"))


def test_a_task_file_next_to_the_gate_file_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("not read at load\n")
    (spec,) = load_gate_file(write(tmp_path, task="mine.yaml"))
    assert spec.task == "mine.yaml"


def test_a_task_file_not_written_yet_is_left_to_the_gate(tmp_path: Path) -> None:
    # a fixture or conftest may write it later in the session; the gate names it if it is not
    (spec,) = load_gate_file(write(tmp_path, task="tasks/later.yaml"))
    assert spec.task == "tasks/later.yaml"


def test_task_problem_reads_files_as_given_and_under_the_folders(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("{}")
    assert task_problem("ioi") == ""
    assert task_problem(str(tmp_path / "t.json")) == ""
    assert task_problem("t.json", (tmp_path,)) == ""
    assert "task file 't.json' not found" in task_problem("t.json")


def test_a_fraction_in_a_gate_file_warns_when_the_file_is_read(tmp_path: Path) -> None:
    with pytest.warns(ThresholdWarning, match=r"line 7: gate 'behaviour'.*did you mean 90\?"):
        load_gate_file(write(tmp_path, retained=0.9))


# ----------------------------------------------------------------------------- the command line


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_an_unknown_task_is_a_usage_error_before_any_model_loads() -> None:
    code, out, err = run("compare", TEACHER, NOWHERE, "--task", "IOI", "-q", "--no-cache")
    assert code == EXIT_USAGE and out == ""
    assert "--task: task 'IOI' is not a built-in task (did you mean 'ioi'?)" in err
    assert "no-such-student" not in err  # nothing was loaded


def test_a_missing_task_file_is_a_usage_error_on_the_command_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothere.yaml")
    code, _, err = run("rank", TEACHER, NOWHERE, "--task", missing, "-q", "--no-cache")
    assert code == EXIT_USAGE and f"task file {missing!r} not found" in err


def test_a_fraction_on_the_command_line_is_a_warning_on_stderr(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # not a directory: the cache option is refused after the warning
    code, _, err = run("calibrate", TEACHER, NOWHERE, "--min-retained", "0.9",
                       "--min-accuracy-retained", "0.5", "-q", "--cache-dir", str(blocked))
    assert code == EXIT_USAGE
    lines = err.splitlines()
    assert lines[0] == ("pytest-circuits: warning: pytest-circuits calibrate: --min-retained 0.9 "
                        "is read as 0.9 percent of the teacher's metric, which almost any "
                        "student reaches; did you mean 90? (percent thresholds are written from "
                        "0 to 100, not as fractions)")
    assert "--min-accuracy-retained 0.5 is read as 0.5 percent" in lines[1]
    assert "--cache-dir" in lines[2]
