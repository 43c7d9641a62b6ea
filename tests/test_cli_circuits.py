"""The command line's circuits and roles: ``compare --circuits --roles`` in its text, ``--json``
(beside the reports ``diff`` reads) and ``--html``; ``circuit --roles``; both opt-in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run_cli as run

from pytest_circuits import cache
from pytest_circuits.cli import EXIT_OK
from pytest_circuits.results import CircuitsReport, read_report

TEACHER, GOOD = "zoo:tiny-teacher", "zoo:tiny-student"
FAST = ["--n-prompts", "8", "-q", "--device", "cpu"]
# slow: zoo models, several discoveries
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_cache_settings")]





@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, str, Path]:
    folder = tmp_path_factory.mktemp("compare")
    saved = dict(cache._settings)
    code, out, err = run("compare", TEACHER, GOOD, "--task", "ioi", *FAST, "--circuits",
                         "--roles", "--json", str(folder / "good.json"), "--html",
                         str(folder / "good.html"), "--cache-dir", str(folder / "cache"))
    cache._settings.update(saved)
    assert code == EXIT_OK, err
    document = json.loads((folder / "good.json").read_text())
    return out, document, (folder / "good.html").read_text(), folder


def test_compare_prints_both_circuits_and_the_role_table(compared) -> None:
    out, document, _, _ = compared
    bundle = CircuitsReport.from_dict(document["circuits"][0])
    teacher, student = bundle.circuits["teacher"], bundle.circuits["student"]
    table = out.split("circuits (iterative node pruning", 1)[1].split("threshold sweep:")[0]
    rows = {line.split()[1]: line for line in table.splitlines()
            if line.startswith(("  teacher zoo:", "  student zoo:"))}
    assert rows[TEACHER].rstrip().endswith(" ".join(teacher.nodes))
    assert f" {teacher.size}  " in rows[TEACHER] and f" {student.size}  " in rows[GOOD]
    assert "threshold sweep:" in out
    # the good student keeps the teacher's IOI similar-member heads (test_roles_gate's numbers)
    similar = next(line for line in out.splitlines() if line.startswith("  similar_member"))
    assert "L2H1, L2H2, L2H3, L3H2" in similar and "L1H2, L1H3" in similar
    assert "L2H2->L1H2" in similar and "DISCARDED" not in similar
    assert bundle.comparison.discarded == {}
    assert bundle.roles["teacher"].holders("similar_member") == ["L2H1", "L2H2", "L2H3", "L3H2"]


def test_compare_json_keeps_the_reports_diff_reads_and_adds_the_circuits(compared) -> None:
    _, document, _, folder = compared
    assert [r["kind"] for r in document["reports"]] == ["pair"]
    bundle = read_report(document["circuits"][0])
    pair = read_report(document["reports"][0])
    assert isinstance(bundle, CircuitsReport)
    assert bundle.matched == tuple((p.teacher, p.student) for p in pair.alignment.pairs)
    assert [len(c.stability) for c in bundle.circuits.values()] == [5, 5]
    path = str(folder / "good.json")
    code, out, err = run("diff", path, path)
    assert code == EXIT_OK, err


def test_compare_html_has_the_circuits_section_from_the_same_results(compared) -> None:
    _, document, page, _ = compared
    bundle = CircuitsReport.from_dict(document["circuits"][0])
    key = "circuits-ioi-zoo-tiny-teacher-zoo-tiny-student:"
    for role, circuit in bundle.circuits.items():
        assert f'data-key="{key}circuit.{role}.faithfulness" data-value="' \
               f'{circuit.faithfulness!r}"' in page
        drawn = re.findall(rf'data-model="{role}" data-node="(\w+)"', page)
        assert sorted(drawn) == sorted(circuit.nodes)
    # the student's similar-member heads in its circuit are coloured by that role
    for head in set(bundle.circuits["student"].heads) & {"L1H2", "L1H3"}:
        assert re.search(rf'data-model="student" data-node="{head}" data-roles="[^"]*'
                         r'similar_member', page)
    lines = re.findall(r'class="match" data-teacher="(\w+)" data-student="(\w+)"', page)
    assert lines and all(t in bundle.circuits["teacher"].nodes
                         and s in bundle.circuits["student"].nodes for t, s in lines)
    assert set(lines) <= set(bundle.matched)


def test_compare_without_the_options_discovers_nothing(tmp_path: Path) -> None:
    code, out, err = run("compare", TEACHER, GOOD, "--task", "ioi", *FAST, "--json",
                         str(tmp_path / "plain.json"), "--cache-dir", str(tmp_path / "cache"))
    assert code == EXIT_OK, err
    assert "circuits (iterative" not in out and "head roles" not in out
    assert "circuits" not in json.loads((tmp_path / "plain.json").read_text())


def test_the_circuit_command_shows_the_roles_of_its_heads(tmp_path: Path) -> None:
    code, out, err = run("circuit", TEACHER, "--task", "ioi", *FAST, "--roles",
                         "--no-stability", "--json", str(tmp_path / "c.json"),
                         "--cache-dir", str(tmp_path / "cache"))
    assert code == EXIT_OK, err
    document = json.loads((tmp_path / "c.json").read_text())
    circuit, roles = document["circuits"][0], document["roles"][0]
    assert "roles of the circuit's heads" in out
    table = out.split("roles of the circuit's heads", 1)[1]
    similar = dict(zip(roles["heads"], roles["scores"]["similar_member"], strict=True))
    for head in (n for n in circuit["nodes"] if not n.startswith("MLP")):
        row = next(line for line in table.splitlines() if line.startswith(f"  {head} "))
        holds = similar[head] >= roles["thresholds"]["similar_member"]
        assert ("similar_member" in re.split(r"\s{2,}", row.strip())[1]) == holds, row
    assert "inhibition" in roles["scores"]  # IOI has a repeated subject
