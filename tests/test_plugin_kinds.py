"""The gate-kind registry and what reads it: thresholds, silent passes, GATES.md, typed records,
the exception tree, the shared YAML loader and the table module."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import pytest_circuits
from pytest_circuits import kinds
from pytest_circuits.baseline import default_tolerance, direction, entry_for
from pytest_circuits.errors import CircuitAssertionError, CircuitsError, GateConfigError
from pytest_circuits.identity import ModelInfo
from pytest_circuits.kinds import KINDS, metric_spec
from pytest_circuits.kinds.registry import reference_markdown
from pytest_circuits.recording import Blame, GateResult, MetricCheck, recording
from pytest_circuits.tables import format_number, format_table
from pytest_circuits.yamlfile import MAX_EXPANDED_NODES, Items, Node, YamlError, load_yaml

GATES_MD = Path(pytest_circuits.__file__).with_name("GATES.md")


class Untouchable:
    """A stand-in model or pair that fails the test if a gate so much as looks at it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the gate touched its model ({name!r}) before checking arguments")


# ----------------------------------------------------------------------------- the registry


def test_the_registry_holds_every_gate_kind_with_its_public_function() -> None:
    assert sorted(KINDS) == ["ablation_robust", "behavior_preserved", "bridge_parity",
                             "circuit_aligned", "circuit_faithful", "mechanism_preserved",
                             "roles_preserved",
                             "shift_robust"]
    for kind in KINDS.values():
        assert getattr(pytest_circuits, kind.function_name) is kind.function
        assert kind.function.__module__.startswith("pytest_circuits.kinds.")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_threshold_bounds_a_reported_metric_in_its_direction(name: str) -> None:
    kind = KINDS[name]
    parameters = inspect.signature(kind.function).parameters
    for threshold in kind.thresholds:
        metric = kind.metric(threshold.metric)
        assert metric is not None, f"{threshold.name} bounds an unreported metric"
        assert metric.direction == threshold.direction
        assert metric.unit == threshold.unit
        default = parameters[threshold.name].default
        expected = None if default is inspect.Parameter.empty else default
        assert threshold.default == expected, f"{threshold.name}: registry and signature differ"
        assert threshold.required == (default is inspect.Parameter.empty)


def test_matching_is_the_matching_strategy_and_method_is_the_sweep_algorithm() -> None:
    sweeping = {"circuit_aligned", "mechanism_preserved", "ablation_robust"}
    for kind in KINDS.values():
        parameters = inspect.signature(kind.function).parameters
        if kind.name in sweeping:
            assert parameters["method"].default is None and "method" in kind.options
        else:
            assert "method" not in parameters and "method" not in kind.options
    for name in ("circuit_aligned", "mechanism_preserved"):
        parameters = inspect.signature(KINDS[name].function).parameters
        assert parameters["matching"].default == "paper"
        assert parameters["direction"].default == "teacher_to_student"
        assert {"matching", "direction"} <= set(KINDS[name].options)


@pytest.mark.parametrize(
    ("gate", "arguments", "message"),
    [
        ("mechanism_preserved", {"components": ["L0H0"], "min_similarity": None,
                                 "min_influence": None},
         "assert_mechanism_preserved: no threshold was set, so nothing would be checked; pass "
         "at least one of min_similarity, min_influence (for example min_similarity=0.5)"),
        ("ablation_robust", {}, "assert_ablation_robust: no threshold was set"),
        ("circuit_aligned", {"min_score": None},
         "assert_circuit_aligned needs min_score (a number in [0, 1]: a score from 0 to 1)"),
        ("circuit_aligned", {"min_score": 1.2},
         "assert_circuit_aligned: min_score=1.2 is out of range: it must lie in [0, 1]"),
        ("behavior_preserved", {"min_retained": "90"},
         "assert_behavior_preserved: min_retained='90' must be a number in [0, 1000]"),
        ("ablation_robust", {"max_single_drop": float("nan")}, "max_single_drop=nan is out of"),
        ("ablation_robust", {"max_severity_increase": 0.1},
         "max_severity_increase compares the student with its teacher, but a single model "
         "(Untouchable) was given"),
        ("mechanism_preserved", {"components": "L0H0"},
         "components='L0H0' must be a non-empty list of teacher component names"),
        ("shift_robust", {"shift": "longer", "max_gap": 10, "seed": -1},
         "assert_shift_robust: seed=-1 must be a whole number >= 0"),
        ("shift_robust", {"shift": "longer", "max_gap": 10,
                          "baseline_tolerance": {"alignment": 0.1}},
         "'alignment' is not a metric of gate shift_robust"),
        ("shift_robust", {"shift": "longer", "max_gap": 10, "max_examples": 2.5},
         "assert_shift_robust: max_examples=2.5 must be a positive integer"),
        ("bridge_parity", {"rtol": 2.0},
         "assert_bridge_parity: rtol=2.0 is out of range: it must lie in [0, 1]"),
        ("bridge_parity", {"atol": -1e-3}, "assert_bridge_parity: atol=-0.001 must be a finite "
                                           "number >= 0"),
        ("bridge_parity", {"atol": float("nan")}, "atol=nan must be a finite number >= 0"),
        ("bridge_parity", {"baseline_tolerance": {"shift_gap": 1}},
         "'shift_gap' is not a metric of gate bridge_parity"),
    ],
)
def test_a_gate_refuses_bad_arguments_before_touching_any_model(
    gate: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(GateConfigError) as raised:
        KINDS[gate].function(Untouchable(), "numerals", **arguments)
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)  # callers catching ValueError keep working


def test_a_gate_that_checks_a_default_tolerance_needs_no_threshold() -> None:
    parity = KINDS["bridge_parity"]
    assert parity.read_thresholds({}) == {"rtol": None}  # the dtype's tolerance applies
    assert parity.optional_thresholds == ()  # so a YAML gate may set none
    assert parity.takes_model and not parity.takes_pair
    with pytest.raises(GateConfigError, match="no threshold was set"):
        KINDS["shift_robust"].read_thresholds({})  # a gate without that fallback still refuses


def test_every_kind_knows_the_metrics_of_the_preflights() -> None:
    """A gate records the parity or lost-behaviour metrics instead of its own when a model
    fails the preflight, and a baseline entry holding them must still read as valid."""
    for kind in KINDS.values():
        for metric in ("bridge_rel_diff", "bridge_abs_diff", "student_logit_diff"):
            assert kind.metric(metric) is not None, (kind.name, metric)
    assert metric_spec("circuit_aligned", "bridge_rel_diff").direction == "<="


def test_metric_directions_and_tolerances_come_from_the_registry() -> None:
    assert metric_spec("mechanism_preserved", "L1H2.student_influence").tolerance == 2.0
    assert default_tolerance("L1H2.similarity", "mechanism_preserved") == 0.02
    assert default_tolerance("worst5_mean", "ablation_robust") == 2.0
    assert default_tolerance("n_pairs", "circuit_aligned") == 0.02  # not compared anyway
    result = GateResult(gate="ablation_robust", subject="s", task="t", checks=[])
    assert direction("gini", result) == "<="
    assert direction("n_components", result) is None
    aligned = GateResult(gate="circuit_aligned", subject="s", task="t", checks=[])
    assert direction("mean_similarity", aligned) == ">="


# ----------------------------------------------------------------------------- GATES.md


@pytest.mark.parametrize("name", sorted(KINDS))
def test_gates_md_documents_each_kind_exactly_as_the_registry_defines_it(name: str) -> None:
    text = GATES_MD.read_text(encoding="utf-8")
    section = reference_markdown(KINDS[name])
    assert section in text, (
        f"GATES.md's section on {name} differs from the registry; replace it with:\n\n{section}"
    )
    assert f"| `{name}` | `{KINDS[name].function_name}` |" in text  # the checks table


def test_gates_md_documents_no_kind_the_registry_lacks() -> None:
    text = GATES_MD.read_text(encoding="utf-8")
    documented = {line.split("`")[1] for line in text.splitlines()
                  if line.startswith("### `") and ": `assert_" in line}
    assert documented == set(KINDS)


# ----------------------------------------------------------------------------- typed records


def model_info(name: str) -> ModelInfo:
    return ModelInfo(name=name, source=f"zoo:{name}", architecture="GPT2LMHeadModel",
                     kind="causal", n_layers=2, n_heads=4, d_head=8, d_model=32, n_params=1234,
                     dtype="float32", device_kind="cpu", processing="raw",
                     weights_sha256="ab" * 32)


def test_a_gate_result_round_trips_through_json_with_typed_parts() -> None:
    result = GateResult(
        gate="circuit_aligned", subject="t -> s", task="numerals",
        checks=[MetricCheck("alignment", 0.7, 0.65, ">=")],
        values={"alignment": 0.7}, blame=[Blame("L1H2", "L0H3", {"similarity": 0.4})],
        fingerprint={"ablation": "mean"},
        models={"teacher": model_info("t"), "student": model_info("s")},
        report={"alignment": {"score": 0.7}},  # no "kind": stays the dict it is
        tolerances={"alignment": 0.05}, nodeid="test_x.py::test_y",
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["blame"] == [{"component": "L1H2", "counterpart": "L0H3",
                              "scores": {"similarity": 0.4}}]
    assert data["models"]["student"]["name"] == "s"
    again = GateResult.from_dict(data)
    assert again == result
    assert isinstance(again.models["teacher"], ModelInfo) and isinstance(again.blame[0], Blame)
    assert entry_for(again)["models"]["teacher"]["weights_sha256"] == "ab" * 32


# ----------------------------------------------------------------------------- errors


def _package_modules() -> list[str]:
    names = ["pytest_circuits"]
    for module in pkgutil.walk_packages(pytest_circuits.__path__, "pytest_circuits."):
        if not module.name.endswith("__main__"):  # running it is the command line, not a module
            names.append(module.name)
    return names


@pytest.mark.slow
def test_every_exception_the_package_defines_derives_from_circuits_error() -> None:
    found = []
    for name in _package_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__.startswith("pytest_circuits")
                    and not value.__name__.startswith("_")):  # private: control flow inside
                # one module (the engine's early stop), never raised to a caller
                found.append(value)
    assert len(set(found)) >= 10  # the walk saw the package, not an empty list
    # warnings are emitted, not raised: they are told apart by category, not caught
    strays = sorted({f"{c.__module__}.{c.__qualname__}" for c in found
                     if not issubclass(c, (CircuitsError, Warning))
                     and c is not CircuitAssertionError})
    assert strays == []
    assert issubclass(CircuitAssertionError, AssertionError)  # a failed gate, not an error


# ----------------------------------------------------------------------------- YAML


def test_the_loader_keeps_lines_and_applies_merge_keys() -> None:
    document = load_yaml("base: &b\n  n_prompts: 8\ngate:\n  <<: *b\n  task:\n    numerals\n")
    assert isinstance(document, Node) and isinstance(document["gate"], Node)
    assert document["gate"] == {"n_prompts": 8, "task": "numerals"}
    assert document.lines == {"base": 1, "gate": 3}
    assert document["gate"].lines["task"] == 5 and document["gate"].value_lines["task"] == 6
    items = load_yaml("- a\n- b\n")
    assert isinstance(items, Items) and items.lines == [1, 2]
    assert load_yaml("# nothing\n") is None


def test_the_loader_refuses_an_alias_bomb_before_building_it() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(YamlError, match=f"more than {MAX_EXPANDED_NODES} values"):
        load_yaml("\n".join(levels) + "\n")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("a: &x [1, *x]\n", 1, "an alias refers to the anchor it is part of"),
        ("a: 1\nb: 2\na: 3\n", 3, "key 'a' appears twice in this mapping (first on line 1)"),
        ("a: !!python/object:os.system {}\n", 1, "invalid YAML"),
        ("? [1, 2]\n: x\n", 1, "key [1, 2] must be a string"),
    ],
)
def test_the_loader_names_the_line_of_what_it_refuses(text: str, line: int, problem: str
                                                      ) -> None:
    with pytest.raises(YamlError) as raised:
        load_yaml(text)
    assert raised.value.line == line and problem in raised.value.problem
    assert isinstance(raised.value, CircuitsError)


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "-"), (0.851234, "0.8512"), (87.5, "87.5"), (12345.0, "1.234e+04"),
     (float("nan"), "nan"), (float("-inf"), "-inf")],
)
def test_numbers_print_with_four_significant_digits(value: float | None, shown: str) -> None:
    assert format_number(value) == shown


def test_a_table_aligns_columns_under_a_rule() -> None:
    assert format_table(["metric", "value"], [["alignment", 0.5], ["n", None]]).splitlines() == [
        "  metric     value",
        "  ---------  -----",
        "  alignment  0.5",
        "  n          -",
    ]


def test_no_module_but_the_tables_module_formats_tables() -> None:
    root = Path(pytest_circuits.__file__).parent
    holders = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if "def format_table" in p.read_text(encoding="utf-8")]
    assert holders == ["tables.py"]
    for reader in ("output.py", "baseline.py"):
        assert "assertions" not in (root / reader).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- real gates


@pytest.mark.slow
def test_a_real_gate_records_its_typed_report_and_it_survives_json(gpt2: Any, gpt2_task: Any
                                                                   ) -> None:
    seen: list[GateResult] = []
    with recording(seen.append):
        report = kinds.assert_ablation_robust(gpt2, gpt2_task, max_single_drop=100.0)
    (result,) = seen
    assert result.report is report and result.models["model"] == gpt2.describe()
    assert result.blame[0].component == report.sweep.worst(1)[0].name
    again = GateResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert type(again.report).__name__ == type(report).__name__
    assert json.loads(json.dumps(again.to_dict())) == json.loads(json.dumps(result.to_dict()))


@pytest.mark.slow
def test_matching_and_direction_reach_the_analysis_and_its_fingerprint(
    gpt2: Any, gpt2_dir: Path, gpt2_task: Any
) -> None:
    from pytest_circuits.models import load_model, load_pair

    # the model as its own student: a pair that certainly performs the task
    pair = load_pair(gpt2, load_model(gpt2_dir, device="cpu", name="copy"))
    seen: list[GateResult] = []
    with recording(seen.append):
        default = kinds.assert_circuit_aligned(pair, gpt2_task, min_score=0.0)
        reverse = kinds.assert_circuit_aligned(pair, gpt2_task, min_score=0.0,
                                               direction="student_to_teacher")
        causal = kinds.assert_mechanism_preserved(
            pair, gpt2_task, components=["L0H0"], min_similarity=-1.0, min_influence=None,
            matching="causal",
        )
    assert default.fingerprint.direction == "teacher_to_student"
    assert reverse.fingerprint.direction == "student_to_teacher"
    assert causal.fingerprint.matching == "causal"
    assert [r.fingerprint["direction"] for r in seen[:2]] == ["teacher_to_student",
                                                              "student_to_teacher"]
    assert [c.metric for c in seen[2].checks] == ["L0H0.similarity"]  # min_influence=None
