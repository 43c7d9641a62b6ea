"""Hostile files: Hypothesis writes malformed gate files, baselines and task files; reading
them may succeed or raise the package's documented errors (CircuitsError subclasses), never a
KeyError, TypeError, RecursionError or anything else, and never a silent pass."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import FINGERPRINT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_circuits.baseline import FORMAT, VERSION, Baseline
from pytest_circuits.errors import CircuitsError
from pytest_circuits.gatefile import GateFileError, load_gate_file
from pytest_circuits.recording import GateResult, MetricCheck
from pytest_circuits.tasks import TaskError, load_task_file

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

#: Words the schemas use, so generated documents get past the first check and into the deep ones.
SCHEMA_WORDS = [
    "pairs", "models", "defaults", "gates", "name", "pair", "model", "task", "teacher",
    "student", "xfail", "marks", "n_prompts", "seed", "device", "dtype", "baseline_tolerance",
    "matching", "direction", "ablation", "similarity", "margin", "tolerance", "components",
    "circuit_aligned", "ablation_robust", "behavior_preserved", "mechanism_preserved",
    "min_score", "min_weighted_score", "max_severity", "max_single_drop", "min_retained",
    "min_similarity", "min_influence", "alignment", "severity", "format", "version", "entries",
    "values", "fingerprint", "checks", "nodeid", "prompts", "prompt", "correct", "distractor",
    "corrupted", "position", "description", "auto", "last", "mask", "numerals", "zoo:tiny",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(SCHEMA_WORDS),
)
keys = st.one_of(st.sampled_from(SCHEMA_WORDS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def _yaml(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


def _mutations(text: str) -> st.SearchStrategy[str]:
    """``text`` with a slice cut out, or with random text inserted: torn and edited files."""
    return st.one_of(
        st.tuples(st.integers(0, len(text)), st.integers(0, 40)).map(
            lambda cut: text[: cut[0]] + text[cut[0] + cut[1]:]),
        st.tuples(st.integers(0, len(text)), st.text(max_size=20)).map(
            lambda ins: text[: ins[0]] + ins[1] + text[ins[0]:]),
    )


VALID_GATES = """\
pairs:
  good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
models:
  alone: zoo:tiny-teacher
defaults: {n_prompts: 8, margin: 0.1}
gates:
  - name: aligned
    pair: good
    task: numerals
    circuit_aligned: {min_score: 0.85}
    baseline_tolerance: {alignment: 0.05}
  - name: robust
    model: alone
    task: numerals
    ablation_robust: {max_single_drop: 90, tolerance: 20, components: [L0H0]}
"""

gate_documents = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={
        "pairs": st.dictionaries(keys, values, max_size=3),
        "models": st.dictionaries(keys, values, max_size=3),
        "defaults": st.dictionaries(keys, values, max_size=4),
        "gates": st.lists(st.dictionaries(keys, values, max_size=6), max_size=3),
    }),
).map(_yaml)


def _write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def _no_stray_errors(call: Any, allowed: type[BaseException]) -> Any:
    """``call()``, letting only ``allowed`` (a CircuitsError subclass) through."""
    try:
        return call()
    except allowed as exc:
        assert str(exc), "an error must say what is wrong"
        return None


# ----------------------------------------------------------------------------- gate files


@SETTINGS
@given(text=st.one_of(gate_documents, _mutations(VALID_GATES), st.text(max_size=200)))
@example(text="\x08")  # a control character: the YAML reader refused it with its own error
@example(text="a: &x [*x]")
def test_a_malformed_gate_file_raises_only_gate_file_errors(scratch: Path, text: str) -> None:
    path = _write(scratch, "circuits.yaml", text)
    specs = _no_stray_errors(lambda: load_gate_file(path), GateFileError)
    for spec in specs or ():
        # what loads is complete: a kind, a subject, a task and sane numbers
        assert spec.kind and spec.subject.source and spec.task
        assert spec.n_prompts is None or spec.n_prompts >= 1
        margin = spec.arguments.get("margin", 0.1)
        assert math.isfinite(margin) and margin >= 0


def test_the_valid_gate_file_of_these_tests_loads(scratch: Path) -> None:
    assert [s.name for s in load_gate_file(_write(scratch, "circuits.yaml", VALID_GATES))] == [
        "aligned", "robust"]


# ----------------------------------------------------------------------------- baselines


def _result(key: str) -> GateResult:
    gate, subject, task = (key.split("::") + ["", "", ""])[:3]
    return GateResult(gate=gate, subject=subject, task=task,
                      checks=[MetricCheck("alignment", 0.9, 0.8, ">=")],
                      values={"alignment": 0.9, "severity": 0.1, "max_single_drop": 30.0},
                      fingerprint=dict(FINGERPRINT), nodeid="t.py::test")


entry_keys = st.one_of(
    st.sampled_from(["circuit_aligned::a -> b::numerals", "ablation_robust::b::numerals",
                     "my_gate::x::y"]),
    st.text(max_size=20),
)
entries = st.dictionaries(
    entry_keys,
    st.one_of(values, st.fixed_dictionaries({}, optional={
        "values": st.one_of(values, st.dictionaries(keys, scalars, max_size=4)),
        "fingerprint": st.one_of(values, st.dictionaries(st.sampled_from(
            list(FINGERPRINT)), scalars, max_size=6)),
        "checks": values, "nodeid": scalars,
    })),
    max_size=3,
)
baseline_documents = st.one_of(
    values,
    st.fixed_dictionaries({"format": st.just(FORMAT), "version": st.just(VERSION),
                           "entries": st.one_of(entries, values)}),
).map(lambda document: json.dumps(document, allow_nan=True))


@SETTINGS
@example(text="[" * 5000 + "]" * 5000, tolerance=None)  # deeper than json's recursion limit
@example(text=json.dumps({"format": FORMAT, "version": VERSION, "entries": {
    "circuit_aligned::a -> b::numerals": {"values": {"alignment": float("nan")}}}}),
    tolerance=None)
@given(text=st.one_of(baseline_documents, st.text(max_size=200),
                      st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)),
       tolerance=st.one_of(st.none(), scalars, st.dictionaries(keys, scalars, max_size=2)))
def test_a_malformed_baseline_raises_only_documented_errors_and_never_passes_a_nan(
    scratch: Path, text: str, tolerance: Any
) -> None:
    path = _write(scratch, "baseline.json", text)
    baseline = _no_stray_errors(lambda: Baseline.load(path), CircuitsError)
    if baseline is None:
        return
    for key in baseline.entries:
        check = _no_stray_errors(lambda k=key: baseline.check(_result(k), tolerance),
                                 CircuitsError)
        if check is None:
            continue
        assert check.status in ("ok", "regressed", "refused", "missing")
        for delta in check.deltas:  # an "ok" rests on finite numbers only
            if not check.failed:
                assert math.isfinite(delta.baseline) and math.isfinite(delta.tolerance)


# ----------------------------------------------------------------------------- task files


VALID_TASK = """\
name: small
prompts:
  - prompt: "Van done in 1. Hat done in 2. Sun done in"
    correct: " 3"
    distractor: " 2"
corrupted:
  - "Van done in 7. Hat done in 2. Sun done in"
"""

task_documents = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={
        "name": scalars, "position": scalars, "seed": scalars, "description": scalars,
        "prompts": st.one_of(values, st.lists(st.dictionaries(
            st.sampled_from(["prompt", "correct", "distractor", "x"]), scalars, max_size=4),
            max_size=3)),
        "corrupted": st.one_of(values, st.lists(scalars, max_size=3)),
    }),
)


@SETTINGS
@given(document=task_documents, suffix=st.sampled_from([".yaml", ".json", ".jsonl"]))
def test_a_malformed_task_file_raises_only_task_errors(scratch: Path, document: Any,
                                                       suffix: str) -> None:
    if suffix == ".yaml":
        text = _yaml(document)
    elif suffix == ".json":
        text = json.dumps(document, allow_nan=True)
    else:
        items = document if isinstance(document, list) else [document]
        text = "\n".join(json.dumps(item, allow_nan=True) for item in items)
    path = _write(scratch, f"task{suffix}", text)
    _no_stray_errors(lambda: load_task_file(path), TaskError)


@SETTINGS
@given(text=st.one_of(_mutations(VALID_TASK), st.binary(max_size=100)))
@example(text=b"name: x\x00\x01")
@example(text=b"\xff\xfe")
def test_a_torn_or_binary_task_file_raises_only_task_errors(scratch: Path,
                                                            text: str | bytes) -> None:
    path = _write(scratch, "task.yaml", text)
    _no_stray_errors(lambda: load_task_file(path), TaskError)


# ------------------------------------------------------------- deep nesting and repeated keys

NESTING_FIX = "Fix: write the task as SCHEMA.md shows"


def _task_error(path: Path) -> str:
    with pytest.raises(TaskError) as caught:
        load_task_file(path)
    return str(caught.value)


@pytest.mark.parametrize(("name", "text"), [
    ("array.json", "[" * 10_000 + "]" * 10_000),
    ("object.json", '{"name": ' * 10_000 + '"x"' + "}" * 10_000),
    ("under-the-decoders-limit.json", "[" * 800 + "]" * 800),
])
def test_a_deeply_nested_json_task_file_is_refused_naming_the_file(scratch: Path, name: str,
                                                                   text: str) -> None:
    path = _write(scratch, name, text)
    message = _task_error(path)
    assert message.startswith(f"{path}:1: lists and objects nest more than 32 levels deep")
    assert NESTING_FIX in message


def test_the_nesting_error_names_the_line_where_the_limit_is_crossed(scratch: Path) -> None:
    lines = ['{"name": "x", "prompts":'] + ["["] * 40 + ["]"] * 40 + [', "corrupted": []}']
    path = _write(scratch, "lines.json", "\n".join(lines))
    # line 1 opens level 1, line k level k: level 33 opens on line 33
    assert _task_error(path).startswith(f"{path}:33: lists and objects nest more than 32")


def test_nesting_up_to_the_limit_reaches_the_schema_checks(scratch: Path) -> None:
    at_limit = _write(scratch, "limit.json", "[" * 32 + "]" * 32)
    assert "the top level must be a mapping, got list" in _task_error(at_limit)
    past = _write(scratch, "past.json", "[" * 33 + "]" * 33)
    assert "nest more than 32 levels deep" in _task_error(past)


def test_a_deeply_nested_jsonl_line_is_refused_naming_its_line(scratch: Path) -> None:
    text = '{"name": "x"}\n{"prompt": "a b", "correct": " 1", "distractor": " 2"}\n'
    path = _write(scratch, "deep.jsonl", text + "[" * 10_000 + "]" * 10_000 + "\n")
    message = _task_error(path)
    assert message.startswith(f"{path}:3: lists and objects nest more than 32 levels deep")


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, "- " * 5_000 + "x\n"])
def test_a_deeply_nested_yaml_task_file_is_refused_naming_the_file(scratch: Path,
                                                                   text: str) -> None:
    path = _write(scratch, "deep.yaml", text)
    assert _task_error(path).startswith(f"{path}:1: the document nests too deeply to read")


def test_a_yaml_task_file_past_the_nesting_limit_names_the_line(scratch: Path) -> None:
    nested = "".join("  " * level + "-\n" for level in range(1, 40))
    path = _write(scratch, "nested.yaml", "name: x\nprompts:\n" + nested + "  " * 40 + "- a\n")
    assert _task_error(path).startswith(f"{path}:34: lists and objects nest more than 32")


DUPLICATE_PROMPTS = """\
{
  "name": "t",
  "prompts": [{"prompt": "a b", "correct": " 1", "distractor": " 2"}],
  "prompts": [{"prompt": "x y", "correct": " 3", "distractor": " 4"}],
  "corrupted": ["a c"]
}
"""


def test_a_json_task_file_with_a_key_twice_is_refused_naming_both_lines(scratch: Path) -> None:
    path = _write(scratch, "twice.json", DUPLICATE_PROMPTS)
    assert _task_error(path) == (
        f"{path}:4: key 'prompts' appears twice in this mapping (first on line 3). Fix: keep "
        "one of the two (a JSON reader would silently keep only the last)"
    )


def test_a_key_twice_inside_a_prompt_of_a_json_file_is_refused(scratch: Path) -> None:
    text = DUPLICATE_PROMPTS.replace('"prompts": [{"prompt": "x y", "correct": " 3", '
                                     '"distractor": " 4"}],\n', "")
    text = text.replace('"correct": " 1",', '"correct": " 1", "correct": " 5",')
    path = _write(scratch, "inner.json", text)
    assert _task_error(path).startswith(f"{path}:3: key 'correct' appears twice")


def test_a_key_twice_in_json_that_yaml_cannot_read_is_still_refused(scratch: Path) -> None:
    path = _write(scratch, "tabs.json", DUPLICATE_PROMPTS.replace("  ", "\t"))  # tabs: not YAML
    assert _task_error(path).startswith(f"{path}: key 'prompts' appears twice in one object")


def test_a_jsonl_line_with_a_key_twice_is_refused_naming_the_line(scratch: Path) -> None:
    text = ('{"name": "t"}\n{"prompt": "a b", "correct": " 1", "distractor": " 2", '
            '"correct": " 3"}\n{"corrupted": "a c"}\n')
    path = _write(scratch, "twice.jsonl", text)
    assert _task_error(path) == (
        f"{path}:2: key 'correct' appears twice in this line's object. Fix: keep one of the "
        "two (a JSON reader would silently keep only the last)"
    )


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".yaml"])
def test_a_task_file_over_the_size_limit_is_refused_before_it_is_read(
        scratch: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(scratch, f"large{suffix}", " " * 101)
    monkeypatch.setattr("pytest_circuits.tasks.files.MAX_TASK_FILE_BYTES", 100)
    assert _task_error(path) == (
        f"{path}: the file is 101 bytes, more than a task file may be (100 bytes). Fix: split "
        "it into several tasks (a gate analyses at most 10,000 prompts)"
    )
