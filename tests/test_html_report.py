"""The HTML report: self-contained, every section present, each number equal to the typed result."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits.analysis.cached import pair_report
from pytest_circuits.analysis.comparison import report_from_dict
from pytest_circuits.errors import CircuitAssertionError
from pytest_circuits.htmlreport import (
    MODEL_PARTS,
    PAIR_PARTS,
    html_snippet,
    render_html,
    write_html,
    write_session_report,
)
from pytest_circuits.htmlreport.page import TOP_COMPONENTS, fmt, slug
from pytest_circuits.models import load_model, load_pair
from pytest_circuits.recording import GateResult, recording

N_PROMPTS = 12
pytestmark = pytest.mark.slow  # every test here works on zoo models (loading takes seconds)


class _Numbers(HTMLParser):
    """Collects every ``<span class="num">``: key, exact value and the text shown."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: dict[str, tuple[str, str]] = {}
        self.parts: dict[str, list[str]] = {}
        self.images: list[str] = []
        self._open: tuple[str, str] | None = None
        self._section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs}
        if tag == "span" and data.get("class") == "num":
            self._open = (data["data-key"], data["data-value"])
        if tag == "section":
            self._section = data.get("id")
            self.parts.setdefault(self._section or "", [])
        if tag == "div" and "data-part" in data and self._section is not None:
            self.parts[self._section].append(data["data-part"])
        if tag == "img":
            self.images.append(data["src"])

    def handle_data(self, text: str) -> None:
        if self._open is not None:
            key, value = self._open
            assert key not in self.numbers, f"number key {key} appears twice"
            self.numbers[key] = (value, text)
            self._open = None


def parse(page: str) -> _Numbers:
    parser = _Numbers()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def teacher() -> Any:
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def good(teacher: Any) -> Any:
    return load_pair(teacher, load_model("zoo:tiny-student", device="cpu"))


@pytest.fixture(scope="module")
def brittle(teacher: Any) -> Any:
    return load_pair(teacher, load_model("zoo:tiny-student-brittle", device="cpu"))


@pytest.fixture(scope="module")
def good_report(good: Any) -> Any:
    return pair_report(good, "numerals", n_prompts=N_PROMPTS)


@pytest.fixture(scope="module")
def brittle_report(brittle: Any) -> Any:
    return pair_report(brittle, "numerals", n_prompts=N_PROMPTS)


@pytest.fixture(scope="module")
def page(good_report: Any, brittle_report: Any) -> str:
    return render_html([good_report, brittle_report])


def expected_numbers(report: Any) -> dict[str, float | int]:
    """What the page must show for ``report``, keyed as the page keys its numbers."""
    t, s = report.teacher.model.name, report.student.model.name
    p = slug(report.task, t, "to", s) + ":"
    a = report.alignment
    want = {
        "behavior_retained": report.behavior_retained,
        "alignment.score": a.score,
        "alignment.score.2": a.score,
        "alignment.weighted_score": a.weighted_score,
        "alignment.weighted_score.2": a.weighted_score,
        "alignment.mean_similarity": a.mean_similarity,
        "alignment.influence_term": a.influence_term,
        "alignment.n_pairs": len(a.pairs),
        "compression": report.compression,
        "discarded.count": len(report.discarded),
        "teacher.logit_diff": report.teacher.performance.mean_logit_diff,
        "student.logit_diff": report.student.performance.mean_logit_diff,
        "teacher.accuracy": report.teacher.performance.accuracy,
        "student.accuracy": report.student.performance.accuracy,
        "headline.teacher.severity": report.teacher.brittleness.severity,
        "headline.student.severity": report.student.brittleness.severity,
    }
    for role, model in (("teacher", report.teacher), ("student", report.student)):
        b = model.brittleness
        for attr in ("mean_drop", "severity", "worst_drop", "count_above_tolerance",
                     "worst5_mean", "gini"):
            want[f"{role}.{attr}"] = getattr(b, attr)
        want[f"{role}.mean_drop_ci.low"], want[f"{role}.mean_drop_ci.high"] = b.mean_drop_ci
    d = report.brittleness_delta
    for attr in ("mean_drop", "severity", "worst_drop", "count_above_tolerance", "worst5_mean",
                 "gini"):
        want[f"delta.{attr}"] = getattr(d, attr)
        per = getattr(d, f"{attr}_per_compression")
        if per is not None:
            want[f"delta.{attr}_per_compression"] = per
    influence = dict(zip(report.student.sweep.names, report.student.sweep.influences,
                         strict=True))
    # every match a student component received, and its fan-in as the report counts it (live,
    # unambiguous matches): the page used to show the first as fan-in, which claimed
    # compression the JSON's fan_in did not hold
    for name, absorbed in report.fan_in_all.items():
        want[f"matched.{name}"] = len(absorbed)
        want[f"fan_in.{name}"] = len(report.fan_in.get(name, []))
        want[f"student_influence.{name}"] = influence[name]
    want["compressed.count"] = len(report.compressed)
    want["dead.count"] = len(report.dead_matches)
    for role in ("teacher", "student"):
        pruned = getattr(report, role).sweep.pruned
        if pruned:
            want[f"{role}.pruned.count"] = len(pruned)
    floor = report.settings.min_student_influence
    top = [m for m in sorted(a.pairs, key=lambda m: (-m.teacher_share, m.teacher))
           if m.teacher_share > 0 and m.teacher_influence >= floor][:TOP_COMPONENTS]
    for m in top:
        want[f"top.{m.teacher}.teacher_influence"] = m.teacher_influence
        want[f"top.{m.teacher}.teacher_share"] = m.teacher_share
        want[f"top.{m.teacher}.similarity"] = m.similarity
        want[f"top.{m.teacher}.student_influence"] = m.student_influence
    for m in a.weakest(5):
        want[f"pair.{m.teacher}.similarity"] = m.similarity
        want[f"pair.{m.teacher}.teacher_share"] = m.teacher_share
        want[f"pair.{m.teacher}.student_share"] = m.student_share
        want[f"pair.{m.teacher}.contribution"] = m.contribution
    for item in report.discarded:
        want[f"discarded.{item.teacher}.teacher_influence"] = item.teacher_influence
        if item.similarity is not None:
            want[f"discarded.{item.teacher}.similarity"] = item.similarity
            want[f"discarded.{item.teacher}.student_influence"] = item.student_influence
    return {p + k: v for k, v in want.items()}


def test_every_number_on_the_page_equals_the_typed_result(
    page: str, good_report: Any, brittle_report: Any
) -> None:
    shown = parse(page).numbers
    want = {**expected_numbers(good_report), **expected_numbers(brittle_report)}
    missing = sorted(set(want) - set(shown))
    assert not missing, f"numbers not on the page: {missing}"
    for key, (exact, text) in shown.items():
        if exact == "":  # a missing value is shown as '-'
            assert text == "-"
            continue
        assert key in want, f"the page shows {key}, which the test does not know"
        assert float(exact) == float(want[key]), key
        assert text == fmt(want[key]), key


def test_shown_text_rounds_the_exact_value(page: str) -> None:
    for key, (exact, text) in parse(page).numbers.items():
        if exact and text not in ("-",):
            assert float(text) == pytest.approx(float(exact), rel=0.01, abs=0.006), key


def test_every_pair_section_has_every_part_in_order(page: str, good_report: Any,
                                                    brittle_report: Any) -> None:
    parts = parse(page).parts
    for report in (good_report, brittle_report):
        anchor = slug(report.task, report.teacher.model.name, "to", report.student.model.name)
        assert parts[anchor] == list(PAIR_PARTS)


def test_the_page_needs_no_network_and_embeds_real_pngs(page: str) -> None:
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page
    assert not re.search(r"<script(?![^>]*application/json)", page)  # inert data only, no JS
    images = parse(page).images
    assert len(images) == 2 * 3  # heatmaps, correspondence, distributions per pair
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_compression_and_dead_matches_are_called_out(page: str, good_report: Any) -> None:
    compressed = good_report.compressed
    dead = {p.student for p in good_report.dead_matches}
    assert compressed and dead, "the zoo student compresses MLPs and has dead heads"
    for name, absorbed in compressed.items():
        assert f"<b>{name}</b>" in page
        assert f"absorbed {len(absorbed)} teacher components" in page
    for name in dead:
        assert re.search(rf"<td>{name}</td>.*?dead: \d+ teacher component", page)


def test_discarded_mechanisms_are_listed_with_their_reason(page: str,
                                                            brittle_report: Any) -> None:
    assert brittle_report.discarded
    for item in brittle_report.discarded:
        assert item.reason.replace("<", "&lt;") in page


def test_the_embedded_data_reads_back_as_the_same_reports(page: str, good_report: Any) -> None:
    import json

    block = re.search(r'<script type="application/json" id="circuits-data">(.*?)</script>',
                      page, re.S)
    assert block is not None
    data = json.loads(block.group(1).replace("<\\/", "</"))
    assert report_from_dict(data[0]).alignment.score == good_report.alignment.score


def test_matplotlib_is_imported_only_when_a_figure_is_drawn() -> None:
    code = ("import sys, pytest_circuits.htmlreport, pytest_circuits.cli; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def gate_results(good: Any, brittle: Any, teacher: Any) -> list[GateResult]:
    """Gates as a pytest run records them, sent through JSON as xdist workers send them."""
    from pytest_circuits import assert_ablation_robust, assert_circuit_aligned

    results: list[GateResult] = []
    with recording(results.append):
        assert_circuit_aligned(good, "numerals", min_score=0.65, n_prompts=N_PROMPTS)
        with pytest.raises(CircuitAssertionError):
            assert_circuit_aligned(brittle, "numerals", min_score=0.65, n_prompts=N_PROMPTS)
        assert_ablation_robust(teacher, "numerals", max_severity=0.5, n_prompts=N_PROMPTS)
    return [GateResult.from_dict(r.to_dict()) for r in results]


def test_session_report_shows_each_gate_in_its_section(gate_results: list[GateResult],
                                                       tmp_path: Path) -> None:
    path = write_session_report(tmp_path / "report.html", gate_results)
    page = path.read_text(encoding="utf-8")
    parsed = parse(page)
    assert set(parsed.parts) == {
        "numerals-zoo-tiny-teacher-to-zoo-tiny-student",
        "numerals-zoo-tiny-teacher-to-zoo-tiny-student-brittle",
        "numerals-zoo-tiny-teacher",
    }
    assert parsed.parts["numerals-zoo-tiny-teacher"] == list(MODEL_PARTS)
    good = re.search(r'id="numerals-zoo-tiny-teacher-to-zoo-tiny-student".*?</section>', page,
                     re.S).group(0)
    bad = re.search(r'id="numerals-zoo-tiny-teacher-to-zoo-tiny-student-brittle".*?</section>',
                    page, re.S).group(0)
    assert 'class="badge PASS">PASS' in good and "FAIL" not in good
    assert 'class="badge FAIL">FAIL' in bad
    value, _ = parsed.numbers[
        "numerals-zoo-tiny-teacher-to-zoo-tiny-student-brittle:gate.0.alignment.value"]
    assert float(value) == gate_results[1].checks[0].value


def test_snippet_for_pytest_html_is_a_fragment_with_verdicts(
        gate_results: list[GateResult]) -> None:
    fragment = html_snippet(gate_results)
    assert not fragment.lstrip().startswith("<!DOCTYPE")
    assert fragment.count('<div class="circuits-extra">') == 3
    assert "FAIL" in fragment and "PASS" in fragment
    assert fragment.count("data:image/png;base64,") == 3


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="no chromium binary installed (Debian: apt-get install chromium); the "
                    "HTML content is checked without a browser above. CI installs it (.ci/run), "
                    "so there a missing browser fails this test instead of skipping it")
def test_chromium_renders_every_section_without_console_errors(
        good_report: Any, brittle_report: Any, tmp_path: Path) -> None:
    path = write_html(tmp_path / "report.html", [good_report, brittle_report])
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    parts = parse(dom.stdout).parts
    assert len(parts) == 2 and all(found == list(PAIR_PARTS) for found in parts.values())
    shot = tmp_path / "report.png"
    done = subprocess.run([*base, "--window-size=1300,2400", f"--screenshot={shot}",
                           path.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 50_000, done.stderr[-2000:]


def test_ambiguous_groups_of_tie_aware_matching_are_listed(good_report: Any) -> None:
    import dataclasses

    from pytest_circuits.analysis.comparison import AmbiguousGroup

    without = render_html([good_report])
    assert "Ambiguous groups" not in without
    group = AmbiguousGroup(kind="head", teachers=("L2H0", "L3H1"), students=("L1H0", "L1H2"))
    page = render_html([dataclasses.replace(good_report, ambiguous=[group])])
    assert "Ambiguous groups (tie-aware matching)" in page
    assert re.search(r"<td>head</td>\s*<td>L2H0, L3H1</td>\s*<td>L1H0, L1H2</td>", page)
