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


def test_with_every_a_long_sweep_prints_on_a_clock_instead_of_at_quarters() -> None:
    lines: list[str] = []
    clock = _Clock()
    show = SweepProgress(lines.append, after=3.0, clock=clock, every=30.0)
    show("smollm2", 0, 300)
    for done in range(1, 301):
        clock.now = done * 0.5  # 150 s in all: the mark at 3 s, then a line each 30 s
        show("smollm2", done, 300)
    assert lines == [
        "circuits: sweeping smollm2: 6/300 ablations after 3.0 s",
        "circuits: sweeping smollm2: 66/300 ablations after 33.0 s",
        "circuits: sweeping smollm2: 126/300 ablations after 63.0 s",
        "circuits: sweeping smollm2: 186/300 ablations after 93.0 s",
        "circuits: sweeping smollm2: 246/300 ablations after 123.0 s",
        "circuits: swept smollm2: 300 ablations in 150.0 s",
    ]


def test_every_must_be_a_number_of_seconds() -> None:
    with pytest.raises(ValueError, match=r"every=-1.0 must be a number of seconds >= 0"):
        SweepProgress(print, every=-1.0)


#: A conftest for the runs below: every sweep is 'long' (the mark at 0 s) and the clock moves
#: 10 s at each reported ablation, so the plugin's 30-second lines come at every third one.
FAKE_CLOCK = (
    "import itertools\n"
    "import pytest_circuits.output as output\n"
    "_ticks = itertools.count(0, 10)\n"
    "output.SweepProgress.__init__.__defaults__ = (0.0, lambda: float(next(_ticks)))\n"
)
SWEEP_TEST = (
    "from pytest_circuits import assert_ablation_robust\n"
    "def test_sweep(teacher):\n"
    "    assert_ablation_robust(teacher, 'numerals', max_severity=1.0, n_prompts=4)\n"
)
LINES = [  # zoo:tiny-teacher has 20 components
    "circuits: sweeping zoo:tiny-teacher: 1/20 ablations after 0.0 s",
    "circuits: sweeping zoo:tiny-teacher: 4/20 ablations after 30.0 s",
    "circuits: sweeping zoo:tiny-teacher: 7/20 ablations after 60.0 s",
    "circuits: sweeping zoo:tiny-teacher: 19/20 ablations after 180.0 s",
    "circuits: swept zoo:tiny-teacher: 20 ablations in 190.0 s",
]


@pytest.mark.slow
def test_a_serial_run_prints_a_line_about_every_30_seconds(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_CLOCK)
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest_subprocess("--circuits-teacher=zoo:tiny-teacher",
                                           "--circuits-no-cache", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    shown = [line for line in result.outlines if line.startswith("circuits: sw")]
    assert shown == [LINES[0], *[f"circuits: sweeping zoo:tiny-teacher: {n}/20 ablations "
                                 f"after {10.0 * (n - 1):.1f} s" for n in (4, 7, 10, 13, 16, 19)],
                     LINES[-1]]


@pytest.mark.slow
def test_an_xdist_worker_prints_its_lines_to_the_ci_log_during_the_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(FAKE_CLOCK)
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest_subprocess("--circuits-teacher=zoo:tiny-teacher",
                                           "--circuits-no-cache", "-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    # on the worker's standard error, which the controller's process (the CI log) shares; the
    # captured output of the test would only come with its report, and only on failure
    worker = [line for line in result.errlines if "circuits: sw" in line]
    assert len(worker) == 8
    assert {line.split(" ", 1)[0] for line in worker} <= {"[gw0]", "[gw1]"}
    assert [line.split(" ", 1)[1] for line in worker][:3] == LINES[:3]
    assert [line.split(" ", 1)[1] for line in worker][-2:] == LINES[-2:]


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_quiet_runs_print_no_progress(pytester: pytest.Pytester, xdist: list[str]) -> None:
    pytester.makeconftest(FAKE_CLOCK)
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest_subprocess("--circuits-teacher=zoo:tiny-teacher",
                                           "--circuits-no-cache", "-q", *xdist)
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines + result.errlines if "circuits: sw" in line]


@pytest.mark.slow
def test_a_sweep_in_a_fixture_prints_its_lines_too(pytester: pytest.Pytester) -> None:
    """Real-model tests sweep in module fixtures (setup), not only in the test's call."""
    pytester.makeconftest(FAKE_CLOCK)
    pytester.makepyfile(
        "import pytest\n"
        "from pytest_circuits import sweep\n"
        "from pytest_circuits.models import load_model\n"
        "from pytest_circuits.tasks import builtin_task\n"
        "@pytest.fixture(scope='module')\n"
        "def swept():\n"
        "    return sweep(load_model('zoo:tiny-teacher'), builtin_task('numerals', n_prompts=4))\n"
        "def test_read(swept):\n"
        "    assert len(swept.effects) == 20\n"
    )
    result = pytester.runpytest_subprocess("--circuits-no-cache", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    shown = [line for line in result.outlines if line.startswith("circuits: sw")]
    assert shown[0] == LINES[0] and shown[-1] == LINES[-1] and len(shown) == 8
