"""Progress of long sweeps: the sweep reports each measured ablation, the CLI's bar and the
plugin's terminal lines read it, and quick sweeps print nothing."""

from __future__ import annotations

import io

import pytest

from pytest_circuits import progress
from pytest_circuits.analysis.ablation import sweep
from pytest_circuits.cli import Progress
from pytest_circuits.models import load_model
from pytest_circuits.output import SweepProgress
from pytest_circuits.tasks import builtin_task


def test_the_sweep_reports_every_measured_ablation() -> None:
    student = load_model("zoo:tiny-student", device="cpu")
    calls: list[tuple[str, int, int]] = []
    with progress.reporting(lambda *args: calls.append(args)):
        result = sweep(student, builtin_task("numerals", n_prompts=4), method="exact")
    n = len(result.effects)
    assert [c[1] for c in calls] == list(range(1, n + 1))
    assert {c[2] for c in calls} == {n} and {c[0] for c in calls} == {student.name}


def test_without_a_callback_nothing_is_reported() -> None:
    progress.report("m", 1, 2)  # no callback installed: must not fail or print


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_quick_sweep_prints_nothing() -> None:
    lines: list[str] = []
    clock = _Clock()
    show = SweepProgress(lines.append, after=3.0, clock=clock)
    for done in range(1, 11):
        clock.now = done * 0.1
        show("m", done, 10)
    assert lines == []


def test_a_long_sweep_prints_when_it_passes_the_mark_at_each_quarter_and_when_done() -> None:
    lines: list[str] = []
    clock = _Clock()
    show = SweepProgress(lines.append, after=3.0, clock=clock)
    show("m", 0, 100)
    for done in range(1, 101):
        clock.now = done * 0.1  # 10 s in all: the mark is passed at 30 of 100
        show("m", done, 100)
    assert lines == [
        "circuits: sweeping m: 30/100 ablations after 3.0 s",
        "circuits: sweeping m: 50/100 ablations after 5.0 s",
        "circuits: sweeping m: 75/100 ablations after 7.5 s",
        "circuits: swept m: 100 ablations in 10.0 s",
    ]


def test_the_cli_bar_shows_the_running_sweep_and_forgets_it_when_done() -> None:
    bar = Progress(2, stream=io.StringIO(), enabled=True)
    bar.components("zoo:tiny-student", 40, 156)
    assert bar.detail == ", zoo:tiny-student 40/156 ablations"
    bar.components("zoo:tiny-student", 156, 156)
    assert bar.detail == ""


@pytest.mark.slow
def test_a_serial_pytest_run_prints_the_sweep_outside_the_captured_output(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        "import pytest_circuits.output as output\n"
        "output.SweepProgress.__init__.__defaults__ = (0.0, None)  # every sweep is 'long'\n"
    )
    pytester.makepyfile(
        "from pytest_circuits import assert_ablation_robust\n"
        "def test_sweep(teacher):\n"
        "    assert_ablation_robust(teacher, 'numerals', max_severity=1.0, n_prompts=4)\n"
    )
    result = pytester.runpytest_subprocess("--circuits-teacher=zoo:tiny-teacher",
                                           "--circuits-no-cache")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["circuits: sweeping zoo:tiny-teacher: 1/20 ablations after *",
                                 "circuits: swept zoo:tiny-teacher: 20 ablations in *"])
