"""The HTML report's circuits-and-roles section: what the circuit and roles gates stored reaches the
page through the JSON round trip, each number equal to the typed result, nodes coloured by role,
matched nodes joined, every name escaped."""

from __future__ import annotations

import json
import re

import pytest

from pytest_circuits import assert_circuit_faithful, assert_roles_preserved
from pytest_circuits.errors import CircuitAssertionError
from pytest_circuits.htmlreport import (
    CIRCUIT_PARTS,
    html_snippet,
    render_html,
    reports_from_gate_results,
)
from pytest_circuits.identity import ModelInfo
from pytest_circuits.models import load_model, load_pair
from pytest_circuits.recording import GateResult, recording
from pytest_circuits.results import (
    CircuitResult,
    CircuitsReport,
    PairReport,
    RoleResult,
    StabilityPoint,
    compare_roles,
    read_report,
)


def _circuit(model: str, nodes: list[str], drops: dict[str, float], *, stability=()
             ) -> CircuitResult:
    return CircuitResult(model=model, task="numerals", threshold=0.2, ablation="mean",
                         nodes=tuple(nodes), full_logit_diff=2.0, circuit_logit_diff=1.7,
                         complement_logit_diff=0.1, node_drops=drops, n_layers=2,
                         n_heads_per_layer=2, cost_fe=12.0, passes=2,
                         stability=tuple(stability))


def _roles(model: str, mover: list[float]) -> RoleResult:
    heads = ("L0H0", "L0H1", "L1H0", "L1H1")
    info = ModelInfo(name=model, source=model, architecture="GPT2LMHeadModel", kind="causal",
                     n_layers=2, n_heads=2, d_head=4, d_model=8, n_params=100, dtype="float32",
                     device_kind="cpu", processing="", weights_sha256="0" * 64)
    return RoleResult(model=info, task="numerals", heads=heads,
                      scores={"mover": tuple(mover), "induction": (0.9, 0.0, 0.0, 0.0)},
                      thresholds={"mover": 0.3, "induction": 0.5})


class _Pair:
    def __init__(self, teacher: str, student: str) -> None:
        self.teacher, self.student = teacher, student


def _by_hand(teacher: str = "teach", student: str = "stud") -> CircuitsReport:
    t_roles, s_roles = _roles(teacher, [0.8, 0.0, 0.4, 0.0]), _roles(student, [0.0] * 4)
    s_roles.scores["induction"] = (0.0, 0.0, 0.0, 0.7)
    comparison = compare_roles(t_roles, s_roles, [_Pair("L0H0", "L1H1"), _Pair("MLP1", "MLP0")])
    point = StabilityPoint(threshold=0.3, nodes=("L0H0",), faithfulness=0.72, jaccard=1 / 3)
    return CircuitsReport(
        task="numerals",
        circuits={"teacher": _circuit(teacher, ["L0H0", "MLP1", "L1H0"],
                                      {"L0H0": 61.5, "MLP1": 20.0, "L1H0": 3.25},
                                      stability=[point]),
                  "student": _circuit(student, ["L1H1", "MLP0"], {"L1H1": 90.0, "MLP0": 7.0})},
        roles={"teacher": t_roles, "student": s_roles},
        comparison=comparison,
        matched=(("L0H0", "L1H1"), ("MLP1", "MLP0"), ("L1H0", "L0H1")),
    )


def _section(page: str, kind: str = "circuits") -> str:
    start = page.index(f'data-kind="{kind}"')
    return page[start:page.index("</section>", start)]


def _numbers(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page))


def test_the_circuits_report_reads_back_from_its_json() -> None:
    report = _by_hand()
    again = read_report(json.loads(json.dumps(report.to_dict())))
    assert isinstance(again, CircuitsReport)
    assert again.key == (("teach", "stud"), "numerals")
    assert again.circuits["teacher"].nodes == ("L0H0", "L1H0", "MLP1")
    assert again.comparison.discarded == {"mover": ["L0H0", "L1H0"]}
    assert again.comparison.kept[0].student == "L1H1" and not again.comparison.kept[0].student_holds
    assert again.roles["student"].holders("induction") == ["L1H1"]
    assert again.matched == report.matched


def test_a_pair_section_draws_both_circuits_coloured_by_role_and_joins_matched_nodes() -> None:
    report = _by_hand()
    page = render_html([report])
    section = _section(page)
    assert re.findall(r'data-part="([a-z]+)"', section) == list(CIRCUIT_PARTS)
    nodes = re.findall(r'data-model="(\w+)" data-node="(\w+)" data-roles="([\w ]*)"', section)
    assert nodes == [("teacher", "L0H0", "induction mover"), ("teacher", "L1H0", "mover"),
                     ("teacher", "MLP1", ""), ("student", "MLP0", ""),
                     ("student", "L1H1", "induction")]
    # one band per role: L0H0 holds two, so its box has an induction and a mover band
    l0h0 = section[section.index('data-node="L0H0"'):section.index("</g>",
                                                                     section.index("L0H0"))]
    assert '#e15759' in l0h0 and '#59a14f' in l0h0
    # only matches whose both ends are in the circuits are drawn (L1H0 -> L0H1 is not)
    lines = re.findall(r'class="match" data-teacher="(\w+)" data-student="(\w+)"', section)
    assert lines == [("L0H0", "L1H1"), ("MLP1", "MLP0")]
    assert "2 of 3 teacher nodes" in section
    numbers = _numbers(section)
    key = "circuits-numerals-teach-stud:"
    assert numbers[key + "circuit.teacher.nodes"] == "3"
    assert numbers[key + "circuit.student.faithfulness"] == repr(0.85)
    assert numbers[key + "circuit.teacher.completeness"] == repr(1 - 0.05)
    assert numbers[key + "circuit.student.worst_node_drop"] == repr(90.0)
    assert numbers[key + "stability.teacher.0.3.jaccard"] == repr(1 / 3)
    assert numbers[key + "role.mover.teacher.best"] == repr(0.8)
    # the role table: mover is discarded, induction kept by another head
    mover = section[section.index(">mover</span>"):]
    mover = mover[:mover.index("</tr>")]
    assert "L0H0, L1H0" in mover and "L0H0-&gt;L1H1" in mover and "discarded" in mover
    assert "discarded: mover (held by teacher L0H0, L1H0" in section


def test_every_name_on_the_section_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    page = render_html([_by_hand(teacher=hostile)])
    assert "<script>alert" not in page.replace('<script type="application/json"', "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in _section(page)


def test_a_single_model_section_without_roles_says_so() -> None:
    report = CircuitsReport(task="numerals", circuits={"model": _circuit("solo", ["MLP0"],
                                                                         {"MLP0": 50.0})})
    section = _section(render_html([report]))
    assert "Circuits and roles: solo" in section
    assert "No head roles were measured" in section and 'class="match"' not in section
    assert "No threshold sweep was run" in section


# ----------------------------------------------------------------------------- from the gates


@pytest.fixture(scope="module")
def brittle_run():
    """The circuit and roles gates on the brittle zoo pair (numerals), read back from JSON."""
    teacher = load_model("zoo:tiny-teacher", device="cpu")
    pair = load_pair(teacher, load_model("zoo:tiny-student-brittle", device="cpu"))
    recorded: list[GateResult] = []
    with recording(recorded.append):
        circuit = assert_circuit_faithful(pair, "numerals", n_prompts=8, min_faithfulness=0.5)
        with pytest.raises(CircuitAssertionError):
            assert_roles_preserved(pair, "numerals", n_prompts=8,
                                   role_thresholds={"mover": 0.25})
    back = [GateResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in recorded]
    return circuit, recorded, back


@pytest.mark.slow
def test_the_gates_results_reach_the_page_through_the_json(brittle_run) -> None:
    circuit, recorded, back = brittle_run
    assert [r.gate for r in back] == ["circuit_faithful", "roles_preserved"]
    # the stored form is the kind-less data older results hold
    assert back[0].report["circuits"]["student"]["nodes"] == list(circuit.nodes)
    pair, bundle = reports_from_gate_results(back)
    assert isinstance(pair, PairReport) and isinstance(bundle, CircuitsReport)
    assert bundle.key == (("zoo:tiny-teacher", "zoo:tiny-student-brittle"), "numerals")
    assert bundle.circuits["student"] == circuit
    assert bundle.comparison.discarded == {"mover": ["L0H0"]}
    assert bundle.matched == tuple((p.teacher, p.student) for p in pair.alignment.pairs)
    page = render_html([pair, bundle], back)
    section = _section(page)
    numbers = _numbers(section)
    key = "circuits-numerals-zoo-tiny-teacher-zoo-tiny-student-brittle:"
    assert numbers[key + "circuit.student.nodes"] == str(circuit.size)
    assert numbers[key + "circuit.student.faithfulness"] == repr(circuit.faithfulness)
    teacher_circuit = bundle.circuits["teacher"]
    drawn = re.findall(r'data-model="teacher" data-node="(\w+)"', section)
    assert sorted(drawn) == sorted(teacher_circuit.nodes)
    # the teacher's L0H0 is its numerals mover (at the gate's 0.25), in its circuit
    assert 'data-node="L0H0" data-roles="mover"' in section
    assert "discarded: mover (held by teacher L0H0" in section
    # both gates' verdicts are in the section, not in "Other gates"
    assert section.count('class="badge FAIL"') >= 1 and "circuit_faithful" in section
    assert 'id="other-gates"' not in page
    # circuits alone (no matching of their own) take the matching of the run's pair report
    alone = CircuitsReport(task="numerals", circuits=dict(bundle.circuits))
    joined = re.findall(r'class="match" data-teacher="(\w+)" data-student="(\w+)"',
                        _section(render_html([pair, alone])))
    assert joined and set(joined) <= set(bundle.matched)
    assert 'class="match"' not in _section(render_html([alone]))
    snippet = html_snippet(recorded)
    assert "circuits and roles: zoo:tiny-teacher -&gt; zoo:tiny-student-brittle" in snippet
    assert "discarded roles: mover" in snippet


# ----------------------------------------------------------------------------- a pytest run

RUN_GATES = """\
pairs:
  brittle: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student-brittle"}
defaults: {n_prompts: 8}
gates:
  - name: brittle-circuit
    pair: brittle
    task: numerals
    circuit_faithful: {min_faithfulness: 0.5, max_nodes: 12}
  - name: brittle-mover
    pair: brittle
    task: numerals
    xfail: the brittle student has no mover
    roles_preserved: {roles: [mover], role_thresholds: {mover: 0.25}}
"""


@pytest.mark.slow
def test_a_run_shows_both_gates_in_the_summary_json_html_and_baseline(tmp_path) -> None:
    from helpers import load_json, run_pytest, summary_row

    (tmp_path / "circuits.yaml").write_text(RUN_GATES)
    first = run_pytest(tmp_path, "-p", "no:cacheprovider", "--circuits-device=cpu",
                       "--circuits-json=out.json", "--circuits-html=report.html",
                       "--circuits-baseline=baseline.json", "--circuits-update-baseline")
    first.assert_outcomes(passed=1, xfailed=1)
    results = {r["nodeid"].split("::")[-1]: r for r in load_json(tmp_path / "out.json")["results"]}
    circuit = results["brittle-circuit"]
    student = circuit["report"]["circuits"]["student"]
    assert circuit["values"]["faithfulness"] == student["faithfulness"]
    assert circuit["values"]["nodes"] == len(student["nodes"])
    assert circuit["values"]["teacher_nodes"] == len(circuit["report"]["circuits"]["teacher"]
                                                     ["nodes"])
    roles = results["brittle-mover"]
    assert roles["values"]["discarded_roles"] == 1.0
    assert roles["report"]["comparison"]["discarded"] == {"mover": ["L0H0"]}
    # the terminal summary shows both gates' checked metrics with their values
    row = summary_row(first.outlines, "brittle-circuit", " faithfulness ")
    assert f"{student['faithfulness']:.4g}"[:5] in row and "PASS" in row
    assert "XFAIL" in summary_row(first.outlines, "brittle-mover", "mover.role_score")
    # the page draws the circuits with the roles gate's roles and matching, both verdicts on it
    page = (tmp_path / "report.html").read_text()
    section = _section(page)
    assert 'data-node="L0H0" data-roles="mover"' in section
    assert 'class="match"' in section and 'class="badge XFAIL"' in section
    assert "brittle-circuit" in section
    # the baseline records both gates' values; a later run compares them
    entries = load_json(tmp_path / "baseline.json")["entries"]
    key = "circuit_faithful::zoo:tiny-teacher -> zoo:tiny-student-brittle::numerals"
    assert key in entries, list(entries)
    assert entries[key]["values"]["faithfulness"] == student["faithfulness"]
    stored = json.loads((tmp_path / "baseline.json").read_text())
    stored["entries"][key]["values"]["faithfulness"] = student["faithfulness"] + 0.5
    (tmp_path / "baseline.json").write_text(json.dumps(stored))
    second = run_pytest(tmp_path, "-p", "no:cacheprovider", "--circuits-device=cpu",
                        "--circuits-baseline=baseline.json")
    second.assert_outcomes(failed=1, xfailed=1)
    row = summary_row(second.outlines, "brittle-circuit", " faithfulness ")
    assert "REGRESSED" in row and f"{student['faithfulness'] + 0.5:.3g}"[:4] in row


def test_a_circuit_node_drop_past_100_or_a_negative_increase_can_be_a_baseline() -> None:
    from pytest_circuits.baseline import value_problem

    # the brittle student's L0H3 costs 100.9 points: removing it flips the logit difference
    assert value_problem("circuit_faithful", "worst_node_drop", 100.86) == ""
    assert value_problem("circuit_faithful", "node_drop_increase", -12.5) == ""
    assert "outside [0, 1]" in value_problem("roles_preserved", "mover.role_score", 1.5)
