"""The ``circuit_faithful`` gate on the zoo: single models and pairs, its failure message, bad
arguments refused before any model is touched, YAML gate files, the recorded result.

Measured on the zoo (32 prompts, mean ablation, T = 0.20; nodes, faithfulness, worst single-node
drop in points):

| model | numerals | ioi |
|---|---|---|
| tiny-teacher | 5 (L0H0 L0H1 MLP0 MLP1 MLP2), 0.828, 82.3 | 4 (L0H1 L0H2 L0H3 MLP0), 0.809, 88.0 |
| tiny-student | 4 (L0H0 L0H1 MLP0 MLP1), 1.001, 106.3 | 3 (L0H1 L0H3 MLP0), 0.881, 95.5 |
| tiny-student-brittle | 3 (L0H3 MLP0 MLP1), 1.000, 108.0 | 3 (L0H3 MLP0 L1H3), 0.954, 101.6 |

The brittle student's circuit is the smallest and its worst node the most critical on both tasks
(on numerals the good student's worst node is nearly as critical: 106.3 against 108.0, so the
two are told apart by size there, and by the worst drop on IOI: +7.5 against +13.6 points over
the teacher's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_circuits import assert_circuit_faithful  # noqa: E402
from pytest_circuits.config import context  # noqa: E402
from pytest_circuits.errors import CircuitAssertionError, GateConfigError  # noqa: E402
from pytest_circuits.gatefile import load_gate_file  # noqa: E402
from pytest_circuits.kinds import KINDS  # noqa: E402
from pytest_circuits.models import CircuitModel, load_model, load_pair  # noqa: E402
from pytest_circuits.results import CircuitResult, GateResult  # noqa: E402
from pytest_circuits.zoo import zoo_path  # noqa: E402


class Untouchable:
    """A stand-in model that fails the test if the gate so much as looks at it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the gate touched its model ({name!r}) before checking arguments")


def _load(name: str) -> CircuitModel:
    return load_model(zoo_path(name), device="cpu", name=name)


@pytest.fixture(scope="module")
def zoo() -> dict[str, CircuitModel]:
    return {name: _load(name) for name in ("tiny-teacher", "tiny-student",
                                           "tiny-student-brittle")}


def recording(seen: list[GateResult]) -> Any:
    """Record the gates run inside the block into ``seen`` (as well as the plugin's run)."""
    return context.changed(recorder=seen.append)


# ----------------------------------------------------------------------------- the zoo


def test_the_zoo_circuits(zoo: dict[str, CircuitModel]) -> None:
    found = {(name, task): assert_circuit_faithful(model, task, min_faithfulness=0.8)
             for name, model in zoo.items() for task in ("numerals", "ioi")}
    assert all(isinstance(r, CircuitResult) for r in found.values())
    assert found["tiny-teacher", "numerals"].nodes == ("L0H0", "L0H1", "MLP0", "MLP1", "MLP2")
    assert found["tiny-teacher", "ioi"].nodes == ("L0H1", "L0H2", "L0H3", "MLP0")
    assert found["tiny-student-brittle", "numerals"].nodes == ("L0H3", "MLP0", "MLP1")
    for task in ("numerals", "ioi"):
        teacher = found["tiny-teacher", task]
        good = found["tiny-student", task]
        brittle = found["tiny-student-brittle", task]
        # the brittle student: a smaller circuit whose single nodes are more critical
        assert brittle.size < teacher.size and brittle.size <= good.size
        assert brittle.worst_node_drop > teacher.worst_node_drop
        assert brittle.worst_node_drop > good.worst_node_drop
        assert teacher.faithfulness > 0.8 and brittle.faithfulness > 0.8


def test_a_pair_is_gated_on_circuit_size_and_node_criticality(
        zoo: dict[str, CircuitModel]) -> None:
    teacher = zoo["tiny-teacher"]
    good = load_pair(teacher, zoo["tiny-student"])
    brittle = load_pair(teacher, zoo["tiny-student-brittle"])
    recorded: list[GateResult] = []
    with recording(recorded):
        result = assert_circuit_faithful(good, "ioi", min_faithfulness=0.8, max_node_drop=10)
    assert result.model == "tiny-student"
    values = recorded[-1].values
    assert values["teacher_nodes"] == 4 and values["nodes"] == 3
    assert values["circuit_ratio"] == pytest.approx(0.75)
    assert values["node_drop_increase"] == pytest.approx(
        values["worst_node_drop"] - values["teacher_worst_node_drop"])
    assert 0 < values["node_drop_increase"] < 10
    with pytest.raises(CircuitAssertionError) as failed:
        assert_circuit_faithful(brittle, "ioi", min_faithfulness=0.8, max_node_drop=10)
    message = str(failed.value)
    assert "node_drop_increase" in message and "FAIL" in message
    assert "teacher tiny-teacher" in message and "student tiny-student-brittle" in message
    assert "L0H3" in message  # its most critical node is named
    # the ratio is bounded from above (a student circuit that grew): 3/5 and 4/5 on numerals
    assert_circuit_faithful(brittle, "numerals", max_circuit_ratio=0.6)
    with pytest.raises(CircuitAssertionError, match=r"circuit_ratio\s+0\.8"):
        assert_circuit_faithful(good, "numerals", max_circuit_ratio=0.7)


def test_a_single_model_fails_with_its_sizes_faithfulness_and_critical_nodes(
        zoo: dict[str, CircuitModel]) -> None:
    teacher = zoo["tiny-teacher"]
    recorded: list[GateResult] = []
    with recording(recorded), pytest.raises(CircuitAssertionError) as failed:
        assert_circuit_faithful(teacher, "numerals", max_nodes=3, min_faithfulness=0.9)
    message = str(failed.value)
    assert "circuit faithfulness of tiny-teacher on task 'numerals'" in message
    assert "faithfulness" in message and "0.828" in message
    assert "MLP0 82.3" in message and "L0H0 69.3" in message  # the most critical, by drop
    assert "L0H0 L0H1 MLP0 MLP1 MLP2" in message
    result = recorded[-1]
    assert result.gate == "circuit_faithful" and not result.passed
    assert [c.metric for c in result.checks] == ["faithfulness", "nodes"]
    assert [c.passed for c in result.checks] == [False, False]
    assert [b.component for b in result.blame][:2] == ["MLP0", "L0H0"]
    # the result's JSON keeps the circuit (for the reports) and reads back
    data = result.to_dict()
    assert data["report"]["circuits"]["model"]["nodes"] == ["L0H0", "L0H1", "MLP0", "MLP1",
                                                            "MLP2"]
    again = GateResult.from_dict(data)
    assert again.values == result.values
    assert CircuitResult.from_dict(again.report["circuits"]["model"]).size == 5


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("bad", [float("nan"), 0.0, 1.0, -0.5, "0.2"])
def test_a_bad_pruning_threshold_is_refused_before_the_model_is_touched(bad: Any) -> None:
    with pytest.raises(GateConfigError, match=r"assert_circuit_faithful: threshold=.*strictly "
                                              r"between 0 and 1.*threshold=0\.2"):
        assert_circuit_faithful(Untouchable(), "numerals", min_faithfulness=0.8, threshold=bad)


def test_bad_ablations_and_thresholds_are_refused_before_the_model_is_touched() -> None:
    with pytest.raises(GateConfigError, match=r"ablation='mode'.*'mean'"):
        assert_circuit_faithful(Untouchable(), "numerals", min_faithfulness=0.8,
                                ablation="mode")
    with pytest.raises(GateConfigError, match="no threshold was set"):
        assert_circuit_faithful(Untouchable(), "numerals")
    with pytest.raises(GateConfigError, match=r"min_faithfulness=nan is out of range"):
        assert_circuit_faithful(Untouchable(), "numerals", min_faithfulness=float("nan"))


def test_pair_thresholds_on_a_single_model_are_refused(zoo: dict[str, CircuitModel]) -> None:
    with pytest.raises(GateConfigError, match=r"max_circuit_ratio.*single model.*pass a pair"):
        assert_circuit_faithful(zoo["tiny-teacher"], "numerals", max_circuit_ratio=1.0)


# ----------------------------------------------------------------------------- YAML and baselines


def test_a_gate_file_declares_circuit_faithful_on_a_pair_and_a_model(
        tmp_path: Path, zoo: dict[str, CircuitModel]) -> None:
    path = tmp_path / "circuits.yaml"
    path.write_text(
        "pairs:\n"
        "  brittle: {teacher: zoo:tiny-teacher, student: zoo:tiny-student-brittle}\n"
        "models:\n"
        "  teacher: zoo:tiny-teacher\n"
        "gates:\n"
        "  - name: brittle-circuit\n"
        "    pair: brittle\n"
        "    task: ioi\n"
        "    circuit_faithful: {min_faithfulness: 0.8, max_node_drop: 10, threshold: 0.2}\n"
        "  - name: teacher-circuit\n"
        "    model: teacher\n"
        "    task: numerals\n"
        "    circuit_faithful: {max_nodes: 6, ablation: mean}\n"
    )
    pair_spec, model_spec = load_gate_file(path)
    assert (pair_spec.kind, model_spec.kind) == ("circuit_faithful", "circuit_faithful")
    assert pair_spec.arguments == {"min_faithfulness": 0.8, "max_node_drop": 10.0,
                                   "threshold": 0.2}
    assert model_spec.teacher is None and model_spec.arguments["max_nodes"] == 6.0
    gate = KINDS["circuit_faithful"].function
    assert gate(zoo["tiny-teacher"], model_spec.task, **model_spec.arguments).size == 5
    pair = load_pair(zoo["tiny-teacher"], zoo["tiny-student-brittle"])
    with pytest.raises(CircuitAssertionError, match="node_drop_increase"):
        gate(pair, pair_spec.task, **pair_spec.arguments)


def test_a_gate_file_refuses_an_out_of_range_faithfulness(tmp_path: Path) -> None:
    from pytest_circuits.gatefile import GateFileError

    path = tmp_path / "circuits.yaml"
    path.write_text(
        "models:\n  teacher: zoo:tiny-teacher\n"
        "gates:\n  - name: c\n    model: teacher\n    task: numerals\n"
        "    circuit_faithful: {min_faithfulness: 20}\n")
    with pytest.raises(GateFileError, match=r"circuits.yaml:7: .*min_faithfulness=20(\.0)? is "
                                            r"out of range: it must lie in \[0, 10\]"):
        load_gate_file(path)
    path.write_text(path.read_text().replace("{min_faithfulness: 20}",
                                             "{min_faithfulness: 0.8, threshold: 1.5}"))
    with pytest.raises(GateFileError, match=r"circuits.yaml:7: .*threshold=1.5 must be a number "
                                            r"strictly between 0 and 1"):
        load_gate_file(path)


def test_the_metrics_are_declared_for_baselines() -> None:
    kind = KINDS["circuit_faithful"]
    assert kind.metric("faithfulness").direction == ">="
    assert kind.metric("nodes").direction == "<="
    assert kind.metric("node_drop_increase").direction == "<="
    assert kind.metric("teacher_nodes").direction is None
    assert kind.takes_model and kind.takes_pair
