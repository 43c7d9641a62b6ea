"""The roles_preserved gate on the zoo: the good student keeps the teacher's IOI roles, the
brittle one discards the numerals mover; bad arguments fail before a model loads; a YAML gate
file runs it and writes its values to the JSON results and the baseline."""

from __future__ import annotations

import pytest

from pytest_circuits import assert_roles_preserved
from pytest_circuits.errors import CircuitAssertionError, GateConfigError
from pytest_circuits.models import load_model, load_pair
from pytest_circuits.recording import recording


class Untouchable:
    """A stand-in pair that fails the test if the gate so much as looks at it."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"the gate touched its pair ({name!r}) before checking arguments")


@pytest.fixture(scope="module")
def teacher():
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def good(teacher):
    return load_pair(teacher, load_model("zoo:tiny-student", device="cpu"))


@pytest.fixture(scope="module")
def brittle(teacher):
    return load_pair(teacher, load_model("zoo:tiny-student-brittle", device="cpu"))


def _recorded(*args, **kwargs):
    """The one GateResult the gate records (passed or failed) and its failure message."""
    results: list = []
    message = ""
    with recording(results.append):
        try:
            assert_roles_preserved(*args, **kwargs)
        except CircuitAssertionError as exc:
            message = str(exc)
    assert len(results) == 1
    return results[0], message


def test_the_good_student_keeps_the_teachers_similar_member_heads_on_ioi(good) -> None:
    result, message = _recorded(good, "ioi", n_prompts=8)
    assert message == "" and result.passed
    assert result.gate == "roles_preserved"
    assert result.values["similar_member.role_score"] == pytest.approx(0.503, abs=0.01)
    assert result.values["discarded_roles"] == 0.0 and result.values["merged_heads"] == 0.0
    [check] = result.checks
    assert (check.metric, check.threshold, check.op) == ("similar_member.role_score", 0.4, ">=")
    assert check.teacher_value == pytest.approx(0.551, abs=0.01)
    comparison = assert_roles_preserved(good, "ioi", n_prompts=8)
    assert comparison.teacher_held == {"similar_member": ["L2H1", "L2H2", "L2H3", "L3H2"]}
    assert comparison.student_held == {"similar_member": ["L1H2", "L1H3"]}
    kept = {k.teacher: (k.student, k.student_holds) for k in comparison.kept}
    assert kept["L2H2"] == ("L1H2", True) and kept["L2H3"] == ("L1H3", True)


def test_the_brittle_student_discards_the_numerals_mover(brittle) -> None:
    # the teacher's L0H0 scores 0.296 as a mover, just under the documented 0.3
    result, message = _recorded(brittle, "numerals", n_prompts=8,
                                role_thresholds={"mover": 0.25})
    assert not result.passed
    assert result.values["mover.role_score"] == pytest.approx(0.002, abs=0.002)
    assert result.values["discarded_roles"] == 1.0
    assert "discarded: mover (teacher L0H0; best student head 0.00 < 0.25)" in message
    assert "role preservation of zoo:tiny-teacher -> zoo:tiny-student-brittle" in message
    assert [b.component for b in result.blame] == ["L0H0"]
    assert result.blame[0].scores["teacher_score"] == pytest.approx(0.296, abs=0.003)


def test_max_merged_bounds_the_merged_heads(good) -> None:
    result, _ = _recorded(good, "ioi", n_prompts=8, max_merged=0)
    assert [c.metric for c in result.checks] == ["similar_member.role_score", "merged_heads"]
    assert result.passed


def test_a_role_the_teacher_does_not_hold_is_an_error_naming_its_best_score(good) -> None:
    with pytest.raises(GateConfigError, match=r"holds no mover head on task 'ioi' \(mover: "
                                              r"best teacher score 0\.2\d < threshold 0\.3\)"):
        assert_roles_preserved(good, "ioi", roles=["mover"], n_prompts=8)
    with pytest.raises(GateConfigError, match=r"holds no head role on task 'numerals'.*"
                                              r"mover 0\.30"):
        assert_roles_preserved(good, "numerals", n_prompts=8)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"roles": ["movr"]}, r"'movr' is not a head role \(did you mean 'mover'\?\)"),
    ({"roles": "nonsense"}, r"'nonsense' is not a head role"),
    ({"role_thresholds": {"mover": 1.5}}, r"role_thresholds\['mover'\]=1\.5 must be a score"),
    ({"role_thresholds": {"inductin": 0.3}}, r"did you mean 'induction'"),
    ({"max_merged": -1}, r"max_merged=-1 is out of range"),
])
def test_bad_arguments_fail_before_the_pair_is_touched(arguments, message) -> None:
    with pytest.raises(GateConfigError, match=message):
        assert_roles_preserved(Untouchable(), "ioi", **arguments)


GATES = """\
pairs:
  good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
  brittle: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student-brittle"}
defaults: {n_prompts: 8}
gates:
  - name: ioi-roles
    pair: good
    task: ioi
    roles_preserved: {roles: [similar_member], role_thresholds: {similar_member: 0.4}}
  - name: numerals-mover
    pair: brittle
    task: numerals
    xfail: the brittle student has no mover
    roles_preserved: {roles: [mover], role_thresholds: {mover: 0.25}}
"""


def test_a_gate_file_reads_roles_and_role_thresholds(tmp_path) -> None:
    from pytest_circuits.gatefile import GateFileError, load_gate_file

    path = tmp_path / "circuits.yaml"
    path.write_text(GATES)
    ioi, numerals = load_gate_file(path)
    assert ioi.kind == "roles_preserved"
    assert ioi.arguments["roles"] == ["similar_member"]
    assert numerals.arguments["role_thresholds"] == {"mover": 0.25}
    path.write_text(GATES.replace("roles: [mover]", "role: [mover]"))
    with pytest.raises(GateFileError, match=r"unknown key 'role'.*did you mean 'roles'"):
        load_gate_file(path)


@pytest.mark.slow
def test_a_yaml_roles_gate_writes_its_values_to_the_results_and_the_baseline(tmp_path) -> None:
    from helpers import load_json, run_pytest

    (tmp_path / "circuits.yaml").write_text(GATES)
    run = run_pytest(tmp_path, "-p", "no:cacheprovider", "--circuits-device=cpu",
                     "--circuits-json=out.json", "--circuits-baseline=baseline.json",
                     "--circuits-update-baseline")
    run.assert_outcomes(passed=1, xfailed=1)
    results = {r["nodeid"].split("::")[-1]: r for r in load_json(tmp_path / "out.json")["results"]}
    assert results["ioi-roles"]["values"]["similar_member.role_score"] == pytest.approx(
        0.503, abs=0.01)
    assert results["numerals-mover"]["values"]["discarded_roles"] == 1.0
    entries = load_json(tmp_path / "baseline.json")["entries"]
    key = "roles_preserved::zoo:tiny-teacher -> zoo:tiny-student::ioi"
    assert entries[key]["values"]["merged_heads"] == 0.0
