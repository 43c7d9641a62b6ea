"""Gate files: the schema, its errors with file and line, and collection as pytest items."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pytest_circuits.gatefile import GateFileError, is_gate_file, load_gate_file
from pytest_circuits.kinds import KINDS

VALID = """\
pairs:
  good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
  brittle:
    teacher: zoo:tiny-teacher
    student: zoo:tiny-student-brittle
models:
  alone: zoo:tiny-teacher
defaults: {n_prompts: 8, ablation: mean}
gates:
  - name: numerals-aligned
    pair: good
    task: numerals
    circuit_aligned: {min_score: 0.85}
  - name: numerals-robust
    pair: brittle
    task: numerals
    ablation_robust: {max_severity: 0.05, max_single_drop: 60}
    xfail: "brittle candidate: one head carries the task"
  - name: teacher-robust
    model: alone
    task: tasks/custom.yaml
    seed: 3
    ablation_robust: {max_single_drop: 90, components: [L0H0, MLP1]}
    baseline_tolerance: {max_single_drop: 5}
"""


def write(tmp_path: Path, text: str, name: str = "circuits.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_valid_file_gives_one_spec_per_gate_with_defaults_applied(tmp_path: Path) -> None:
    aligned, robust, alone = load_gate_file(write(tmp_path, VALID))
    assert (aligned.name, aligned.kind, aligned.line, aligned.task) == (
        "numerals-aligned", "circuit_aligned", 10, "numerals")
    assert (aligned.teacher.name, aligned.subject.name) == ("zoo:tiny-teacher", "zoo:tiny-student")
    assert aligned.arguments == {"min_score": 0.85, "ablation": "mean"}
    assert aligned.n_prompts == 8 and aligned.xfail is None
    assert robust.subject.name == "zoo:tiny-student-brittle"
    assert robust.arguments == {"max_severity": 0.05, "max_single_drop": 60.0, "ablation": "mean"}
    assert robust.xfail == "brittle candidate: one head carries the task"
    assert alone.teacher is None and alone.subject.name == "zoo:tiny-teacher"
    assert alone.seed == 3 and alone.task == "tasks/custom.yaml"
    assert alone.arguments == {"max_single_drop": 90.0, "components": ["L0H0", "MLP1"],
                               "ablation": "mean", "baseline_tolerance": {"max_single_drop": 5.0}}


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("min_score", "min_scor", 13,
         "unknown key 'min_scor' in gate 'numerals-aligned': circuit_aligned (did you mean "
         "'min_score'?)"),
        ("    task: numerals\n    circuit_aligned", "    tsk: numerals\n    circuit_aligned", 12,
         "unknown key 'tsk' in gate 'numerals-aligned' (did you mean 'task'?)"),
        ("min_score", "min_scor", 13,
         "unknown key 'min_scor' in gate 'numerals-aligned': circuit_aligned (did you mean "
         "'min_score'?)"),
        ("pair: good", "pair: goood", 11,
         "unknown pair 'goood' (did you mean 'good'?); declared pairs: good, brittle"),
        ("0.85", "high", 13,
         "gate 'numerals-aligned': circuit_aligned: min_score must be a number, got a string "
         "'high'"),
        ("{max_severity: 0.05, max_single_drop: 60}", "{components: all}", 17,
         "ablation_robust sets no threshold, so it would check nothing: add at least one of "
         "max_severity"),
        ("{min_score: 0.85}", "{matching: causal}", 13,
         "gate 'numerals-aligned': circuit_aligned needs min_score"),
        ("{min_score: 0.85}", "{min_score: 0.85, method: causal}", 13,
         "gate 'numerals-aligned': circuit_aligned: method: causal names a matching strategy, "
         "but method is now the sweep algorithm (exact or auto); write matching: causal"),
        ("{min_score: 0.85}", "{min_score: 0.85, method: fast}", 13,
         "gate 'numerals-aligned': circuit_aligned: method 'fast' is not one of exact, auto"),
        ("{min_score: 0.85}", "{min_score: 1.5}", 13,
         "gate 'numerals-aligned': circuit_aligned: min_score=1.5 is out of range: it must lie "
         "in [0, 1] (a score from 0 to 1)"),
        ("{max_severity: 0.05, max_single_drop: 60}", "{max_single_drop: 160}", 17,
         "max_single_drop=160.0 is out of range: it must lie in [0, 100] (percentage points"),
        ("    seed: 3\n", "    seed: 3\n    dtype: int8\n", 23,
         "gate 'teacher-robust': dtype 'int8' is not one of float32, float16, bfloat16"),
        ("n_prompts: 8", "n_prompts: eight", 8,
         "defaults: n_prompts must be a whole number, got a string 'eight'"),
        ("gates:", "gatez:", 9, "unknown key 'gatez' in the gate file (did you mean 'gates'?)"),
        ("task: numerals\n    circuit", "task: [numerals\n    circuit", 13,
         "invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence started "
         "on line 12)"),
        ("xfail: \"brittle candidate: one head carries the task\"", "xfail: yes", 18,
         "gate 'numerals-robust': xfail must be a non-empty string, got a boolean True"),
        ("  - name: teacher-robust", "  - name: numerals-aligned", 19,
         "gate name 'numerals-aligned' is already used by the gate on line 10"),
        ("    model: alone", "    pair: good\n    model: alone", 21,
         "gate 'teacher-robust' names both a pair and a model"),
        ("    pair: good\n", "    model: alone\n", 11,
         "circuit_aligned compares a teacher with a student: give pair: NAME instead of model:"),
        ("    student: zoo:tiny-student-brittle\n", "", 3, "pair 'brittle' has no student"),
        ("    task: numerals\n    circuit_aligned", "    circuit_aligned", 10,
         "gate 'numerals-aligned' has no task: add task: numerals"),
        ("circuit_aligned: {min_score: 0.85}",
         "circuit_aligned: {min_score: 0.85}\n    behavior_preserved: {min_retained: 90}", 10,
         "must declare exactly one check"),
        ("components: [L0H0, MLP1]", "components: [L0H0, 3]", 23,
         "components[1] must be a string, got a number 3"),
        ("  alone: zoo:tiny-teacher", "  alone: zoo:tiny-teacher\n  alone: zoo:tiny-student", 8,
         "key 'alone' appears twice in this mapping (first on line 7); keep one"),
    ],
)
def test_a_mistake_is_reported_with_file_line_and_fix(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(GateFileError) as raised:
        load_gate_file(path)
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("defaults: {n_prompts: 8, ablation: mean}", "defaults: {n_prompts: 8, margin: -1}", 8,
         "margin=-1 must be a finite number >= 0"),
        ("defaults: {n_prompts: 8, ablation: mean}", "defaults: {n_prompts: 8, margin: .nan}", 8,
         "margin=nan must be a finite number >= 0"),
        ("max_single_drop: 60}", "max_single_drop: 60, tolerance: 150}", 17,
         "tolerance=150 must be a number in [0, 100)"),
        ("baseline_tolerance: {max_single_drop: 5}", "baseline_tolerance: {max_single_drop: .nan}",
         24, "baseline_tolerance['max_single_drop'] is nan"),
        ("baseline_tolerance: {max_single_drop: 5}", "baseline_tolerance: -0.5", 24,
         "baseline_tolerance is -0.5; give a finite number >= 0"),
        ("baseline_tolerance: {max_single_drop: 5}", "baseline_tolerance: {max_singel_drop: 5}",
         24, "'max_singel_drop' is not a metric of any gate kind (did you mean "
             "'max_single_drop'?)"),
        ("baseline_tolerance: {max_single_drop: 5}", "baseline_tolerance: {alignment: 0.1}", 24,
         "'alignment' is not a metric of gate ablation_robust"),
        ("    seed: 3", "    seed: -1", 22, "seed must be at least 0, got -1"),
        ("    seed: 3", "    n_prompts: 0", 22, "n_prompts must be 1 to 10,000, got 0"),
        ("    seed: 3", "    n_prompts: 20000", 22, "n_prompts must be 1 to 10,000, got 20,000"),
        ("    seed: 3", "    device: tpu", 22, "device 'tpu' is not one of auto, cpu, cuda"),
    ],
)
def test_numbers_that_would_weaken_a_gate_are_refused_with_their_line(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(GateFileError) as raised:
        load_gate_file(path)
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)


def test_an_empty_file_says_what_to_declare(tmp_path: Path) -> None:
    with pytest.raises(GateFileError, match=r"circuits.yaml:1: the gate file is empty"):
        load_gate_file(write(tmp_path, "# nothing yet\n"))


def test_only_circuits_yaml_files_are_gate_files() -> None:
    assert is_gate_file(Path("circuits.yaml"))
    assert is_gate_file(Path("circuits_release.yml"))
    assert not is_gate_file(Path("circuits.json"))
    assert not is_gate_file(Path("other.yaml"))
    assert not is_gate_file(Path("circuitsfoo.yaml"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_check_takes_the_keyword_arguments_of_its_assertion(kind: str) -> None:
    parameters = inspect.signature(KINDS[kind].function).parameters
    for key in KINDS[kind].keys + ("seed", "baseline_tolerance"):
        assert key in parameters, f"{kind}: {key} is not a parameter of {KINDS[kind].function}"


def test_gates_are_collected_as_items_and_a_bad_file_is_a_collection_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".yaml", circuits=VALID)
    pytester.makefile(".yaml", circuits_bad=VALID.replace("min_score", "min_scor"))
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "circuits.yaml::numerals-aligned",
        "circuits.yaml::numerals-robust",
        "circuits.yaml::teacher-robust",
    ])
    result.stdout.fnmatch_lines([
        "*ERROR collecting circuits_bad.yaml*",
        "*circuits_bad.yaml:13: unknown key 'min_scor' in gate 'numerals-aligned': "
        "circuit_aligned (did you mean 'min_score'?)*",
    ])
    assert "Traceback" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED


SHIFT_AND_PARITY = """\
pairs:
  good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
models:
  teacher: zoo:tiny-teacher
defaults: {n_prompts: 8, pair: good}
gates:
  - name: ioi-objects
    task: ioi
    shift_robust: {shift: objects, max_gap: 30, max_examples: 5}
  - name: teacher-parity
    model: teacher
    task: numerals
    bridge_parity: {atol: 0.00001}
"""


def test_shift_and_parity_gates_read_their_own_keys(tmp_path: Path) -> None:
    shift, parity = load_gate_file(write(tmp_path, SHIFT_AND_PARITY))
    assert (shift.kind, shift.teacher.name, shift.subject.name) == (
        "shift_robust", "zoo:tiny-teacher", "zoo:tiny-student")
    assert shift.arguments == {"shift": "objects", "max_gap": 30.0, "max_examples": 5}
    assert isinstance(shift.arguments["max_examples"], int)  # Hypothesis needs a count
    # bridge_parity sets no threshold: it checks the dtype's tolerance, which is not nothing
    assert (parity.kind, parity.teacher, parity.subject.name) == (
        "bridge_parity", None, "zoo:tiny-teacher")
    assert parity.arguments == {"atol": 1e-5}


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("shift: objects", "shift: 3", 9,
         "gate 'ioi-objects': shift_robust: shift must be a non-empty string, got a number 3"),
        ("shift: objects, ", "", 9, "gate 'ioi-objects': shift_robust needs shift: add shift:"),
        ("max_examples: 5", "max_examples: 0", 9,
         "shift_robust: max_examples=0 must be a positive integer"),
        ("max_examples: 5", "max_examples: 2.5", 9,
         "shift_robust: max_examples must be a whole number, got a number 2.5"),
        ("atol: 0.00001", "atol: -1", 13,
         "gate 'teacher-parity': bridge_parity: atol=-1 must be a finite number >= 0"),
        ("atol: 0.00001", "rtol: 2", 13, "rtol=2.0 is out of range: it must lie in [0, 1]"),
        ("    model: teacher\n", "    pair: good\n", 11,
         "gate 'teacher-parity': bridge_parity checks one model at a time: give model: NAME"),
        ("    model: teacher\n", "", 5,  # the defaults' pair does not fit a one-model check
         "bridge_parity checks one model at a time"),
    ],
)
def test_shift_and_parity_mistakes_are_reported_with_their_line(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in SHIFT_AND_PARITY
    path = write(tmp_path, SHIFT_AND_PARITY.replace(old, new, 1))
    with pytest.raises(GateFileError) as raised:
        load_gate_file(path)
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)
