"""A gate that no setting, fault or path turns green: merged markers, run settings reaching the
gates, argument guards at the gate edge, a student that lost the task, interruptions, unwritable
outputs, --circuits-require-gpu, file permissions, threads and cuda:auto, the HTML report."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import FAKE_GATES, load_json, run_pytest

from pytest_circuits import kinds
from pytest_circuits.atomic import write_bytes_atomic
from pytest_circuits.config.options import check_margin
from pytest_circuits.errors import CircuitAssertionError, GateConfigError, InvalidTaskError
from pytest_circuits.kinds import read_baseline_tolerance
from pytest_circuits.kinds.runner import task_options
from pytest_circuits.recording import GateResult, RunSettings, recording, using_settings
from pytest_circuits.settings import default_threads, spread_device


class Stop(Exception):
    """Raised by a stand-in analysis: the gate got as far as asking for its task."""


# ----------------------------------------------------------------------------- markers merge


MERGE_SUITE = '''
import pytest

from pytest_circuits.recording import run_settings

pytestmark = pytest.mark.circuits(task="numwords", seed=5)


@pytest.mark.circuits(n_prompts=3)
def test_function_marker_keeps_the_module_task(circuit_task):
    assert (circuit_task.name, len(circuit_task.prompts)) == ("numwords", 3)


@pytest.mark.circuits(n_prompts=4)
class TestClass:
    @pytest.mark.circuits(task="numerals")
    def test_nearest_wins_per_key(self, circuit_task):
        assert (circuit_task.name, len(circuit_task.prompts)) == ("numerals", 4)

    def test_gates_see_the_merged_settings(self):
        settings = run_settings()
        assert (settings.n_prompts, settings.seed) == (4, 5)


def test_the_option_reaches_a_gate_given_a_task_name():
    assert run_settings().n_prompts == 6


@pytest.mark.circuits(baseline_tolerance=float("nan"))
def test_a_nan_marker_tolerance_fails():
    pass
'''


def test_markers_merge_from_module_class_and_function(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_merge=MERGE_SUITE)
    result = pytester.runpytest("--circuits-n-prompts=6", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*baseline_tolerance=...) is nan; give a finite number >= 0*"])


# ----------------------------------------------------------------------------- gate edge


def test_a_gate_given_a_task_name_uses_the_run_settings(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    import pytest_circuits.analysis.store as cached

    seen: list[tuple[Any, ...]] = []

    built_for: list[Any] = []

    def fake_as_task(task: Any, n_prompts: int | None, seed: int, model: Any = None) -> Any:
        seen.append((task, n_prompts, seed))
        built_for.append(model)
        raise Stop

    monkeypatch.setattr(cached, "as_task", fake_as_task)
    model = object()  # not a pair: the robustness gate runs on it alone
    with using_settings(RunSettings(n_prompts=7, seed=3)), pytest.raises(Stop):
        kinds.assert_ablation_robust(model, "numerals", max_severity=0.5)
    with using_settings(RunSettings(n_prompts=7, seed=3)), pytest.raises(Stop):
        kinds.assert_ablation_robust(model, "numerals", max_severity=0.5, n_prompts=2, seed=0)
    with using_settings(RunSettings()), pytest.raises(Stop):  # no settings: the defaults
        kinds.assert_ablation_robust(model, "numerals", max_severity=0.5)
    with pytest.raises(Stop):  # this very test, run by the plugin: the run's (default) values
        kinds.assert_ablation_robust(model, "numerals", max_severity=0.5)
    assert seen == [("numerals", 7, 3), ("numerals", 2, 0), ("numerals", None, 0),
                    ("numerals", 32, 0)]
    assert all(m is model for m in built_for)  # the built-in is built for the model checked


class CpuModel:
    """A stand-in model on the CPU: enough for the gate edge, which looks at nothing else."""

    name, device, device_kind = "student", "cpu", "cpu"


def _cpu_pair() -> Any:
    from pytest_circuits.models import ModelPair

    return ModelPair(CpuModel(), CpuModel())  # type: ignore[arg-type]


def test_the_shift_gate_uses_the_run_settings_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_circuits.kinds import shift

    seen: list[tuple[Any, ...]] = []

    def fake_base_task(pair: Any, task: Any, name: str, *, n_prompts: int | None, seed: int
                       ) -> Any:
        seen.append((task, name, n_prompts, seed))
        raise Stop

    monkeypatch.setattr(shift, "base_task", fake_base_task)
    gate = dict(shift="longer", max_gap=10)
    with using_settings(RunSettings(n_prompts=7, seed=3)), pytest.raises(Stop):
        kinds.assert_shift_robust(_cpu_pair(), "numerals", **gate)
    with using_settings(RunSettings(n_prompts=7, seed=3)), pytest.raises(Stop):
        kinds.assert_shift_robust(_cpu_pair(), "numerals", n_prompts=2, seed=0, **gate)
    assert seen == [("numerals", "longer", 7, 3), ("numerals", "longer", 2, 0)]


@pytest.mark.parametrize("n_prompts", [0, -3, 2.5, True])
def test_n_prompts_zero_or_nonsense_is_an_error_not_the_default(n_prompts: Any) -> None:
    with pytest.raises(GateConfigError, match="n_prompts=.* must be a whole number >= 1"):
        task_options(n_prompts, None, "assert_x")
    with pytest.raises(GateConfigError, match="n_prompts"):
        kinds.assert_ablation_robust(object(), "numerals", max_severity=0.5,
                                     n_prompts=n_prompts)
    with pytest.raises(GateConfigError, match="n_prompts"):
        kinds.assert_shift_robust(object(), "numerals", shift="longer", max_gap=10,
                                  n_prompts=n_prompts)


@pytest.mark.parametrize("margin", [-0.5, float("nan"), float("inf"), "0.1", None])
def test_a_bad_margin_is_refused_before_the_guard_can_be_turned_off(margin: Any) -> None:
    with pytest.raises(GateConfigError, match="margin=.* must be a finite number >= 0"):
        check_margin(margin, "assert_x")
    for call in (
        lambda: kinds.assert_ablation_robust(object(), "numerals", max_severity=0.5,
                                             margin=margin),
        lambda: kinds.assert_circuit_aligned(object(), "numerals", min_score=0.5, margin=margin),
        lambda: kinds.assert_behavior_preserved(object(), "numerals", min_retained=50,
                                                margin=margin),
        lambda: kinds.assert_mechanism_preserved(object(), "numerals", components=["L0H0"],
                                                 margin=margin),
        lambda: kinds.assert_shift_robust(object(), "numerals", shift="longer", max_gap=10,
                                          margin=margin),
    ):
        with pytest.raises(GateConfigError, match="margin"):
            call()


@pytest.mark.parametrize("tolerance", [-1.0, 101.0, float("nan")])
def test_a_sweep_tolerance_outside_0_to_100_points_is_refused(tolerance: float) -> None:
    with pytest.raises(GateConfigError, match=r"tolerance=.* must be a number in \[0, 100\)"):
        kinds.assert_ablation_robust(object(), "numerals", max_severity=0.5, tolerance=tolerance)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (float("nan"), "is nan; give a finite number >= 0"),
        (-0.01, "is -0.01; give a finite number >= 0"),
        ({"alignmnet": 0.1}, "'alignmnet' is not a metric of gate circuit_aligned (did you mean "
                             "'alignment'?)"),
        ({"severity": 0.1}, "'severity' is not a metric of gate circuit_aligned"),
        ({"alignment": float("nan")}, "['alignment'] is nan"),
        ({}, "is an empty mapping"),
    ],
)
def test_a_bad_baseline_tolerance_is_an_error_at_the_gate(value: Any, problem: str) -> None:
    with pytest.raises(GateConfigError) as caught:
        kinds.assert_circuit_aligned(object(), "numerals", min_score=0.5,
                                     baseline_tolerance=value)
    assert problem in str(caught.value)


def test_a_known_metric_of_any_kind_is_accepted_where_no_kind_is_known() -> None:
    assert read_baseline_tolerance({"severity": 0.1, "L1H2.similarity": 0}, "marker") == {
        "severity": 0.1, "L1H2.similarity": 0.0}
    assert read_baseline_tolerance(0.5, "marker") == 0.5


# ----------------------------------------------------------------------------- lost behaviour


def _losing_task(teacher: Any, student: Any) -> Any:
    """A task the teacher performs and the student does not: for each prompt the answer pair
    on which the teacher prefers the correct name and the student the distractor."""
    import torch
    from helpers import ANSWER_NAMES, ioi_prompt

    from pytest_circuits.tasks import Task

    pairs = [(ANSWER_NAMES[i], ANSWER_NAMES[(i + 3) % 12]) for i in range(6)]
    prompts = [ioi_prompt(a, b, b if i % 2 == 0 else a) for i, (a, b) in enumerate(pairs)]
    name_ids = torch.tensor([teacher.tokenizer.convert_tokens_to_ids(n) for n in ANSWER_NAMES])
    scores = []
    for model in (teacher, student):
        ids = torch.tensor([model.tokenizer(p)["input_ids"] for p in prompts])
        with torch.no_grad():
            scores.append(model.hf_model(ids).logits[:, -1][:, name_ids].double())
    gap_t = scores[0][:, :, None] - scores[0][:, None, :]  # [prompt, correct, distractor]
    gap_s = scores[1][:, :, None] - scores[1][:, None, :]
    best = torch.minimum(gap_t, -gap_s).flatten(1).argmax(-1)
    correct = [" " + ANSWER_NAMES[int(b) // 12] for b in best]
    distractors = [" " + ANSWER_NAMES[int(b) % 12] for b in best]
    return Task(name="lost", prompts=tuple(prompts), correct=tuple(correct),
                distractors=tuple(distractors), corrupted=tuple(prompts[::-1]))


@pytest.mark.slow
def test_a_student_that_lost_the_task_fails_the_gate_and_a_teacher_that_cannot_errs(
    gpt2: Any, gpt2_student_dir: Path
) -> None:
    from pytest_circuits.analysis import task_performance
    from pytest_circuits.models import load_model, load_pair

    student = load_model(gpt2_student_dir, device="cpu", name="student")
    task = _losing_task(gpt2, student)
    teacher_diff = task_performance(gpt2, task).mean_logit_diff
    student_diff = task_performance(student, task).mean_logit_diff
    assert teacher_diff > 0.1 >= student_diff  # the premise: only the student lost it

    pair = load_pair(gpt2, student)
    # the shift gate measures against a built-in task: the same prompts, named as the built-in
    # whose shifts apply (the tiny vocabulary holds the IOI objects)
    as_ioi = dataclasses.replace(task, name="ioi")
    seen: list[GateResult] = []
    for gate in (
        lambda: kinds.assert_circuit_aligned(pair, task, min_score=0.0),
        lambda: kinds.assert_ablation_robust(pair, task, max_severity=1.0),
        lambda: kinds.assert_mechanism_preserved(pair, task, components=["L0H0"]),
        lambda: kinds.assert_shift_robust(pair, as_ioi, shift="objects", max_gap=100),
    ):
        with recording(seen.append), pytest.raises(CircuitAssertionError) as caught:
            gate()
        message = str(caught.value)
        assert "behaviour lost" in message
        assert f"{student_diff:.4f}" in message and f"{teacher_diff:.4f}" in message
    assert [r.gate for r in seen] == ["circuit_aligned", "ablation_robust",
                                      "mechanism_preserved", "shift_robust"]
    for result in seen:
        assert not result.passed
        assert result.values["student_logit_diff"] == pytest.approx(student_diff)
        assert result.values["teacher_logit_diff"] == pytest.approx(teacher_diff)
    assert seen[0].subject.endswith(" -> student")  # the pair gates' baseline key
    assert seen[1].subject == "student"  # the robustness gate's own baseline key

    assert seen[3].subject == pair.name
    # the other way round the teacher cannot do the task: the test is misconfigured
    with pytest.raises(InvalidTaskError, match="does not perform this task"):
        kinds.assert_circuit_aligned(load_pair(student, gpt2), task, min_score=0.0)
    with pytest.raises(InvalidTaskError, match="does not perform this task"):
        kinds.assert_shift_robust(load_pair(student, gpt2), as_ioi, shift="objects",
                                  max_gap=100)


# ----------------------------------------------------------------------------- require GPU


def test_require_gpu_fails_a_gate_whose_models_are_on_the_cpu(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import pytest_circuits.analysis.store as cached
    from pytest_circuits.kinds import shift

    monkeypatch.setattr(cached, "as_task", lambda *a: (_ for _ in ()).throw(Stop()))
    monkeypatch.setattr(shift, "base_task", lambda *a, **k: (_ for _ in ()).throw(Stop()))

    with pytest.raises(Stop):  # without the option the gate goes on to its analysis
        kinds.assert_ablation_robust(CpuModel(), "numerals", max_severity=0.5)
    with pytest.raises(Stop):
        kinds.assert_shift_robust(_cpu_pair(), "numerals", shift="longer", max_gap=10)
    with using_settings(RunSettings(require_gpu=True)):
        with pytest.raises(pytest.fail.Exception, match="--circuits-require-gpu was given but "
                                                        "this gate would run on student on cpu"):
            kinds.assert_ablation_robust(CpuModel(), "numerals", max_severity=0.5)
        with pytest.raises(pytest.fail.Exception, match="--circuits-require-gpu was given but "
                                                        "this gate would run on student on cpu, "
                                                        "student on cpu"):
            kinds.assert_shift_robust(_cpu_pair(), "numerals", shift="longer", max_gap=10)
        with pytest.raises(pytest.fail.Exception, match="assert_bridge_parity: "
                                                        "--circuits-require-gpu"):
            kinds.assert_bridge_parity(CpuModel(), "numerals")


@pytest.mark.slow
def test_require_gpu_fails_a_fixture_that_would_load_on_the_cpu(pytester: pytest.Pytester
                                                                ) -> None:
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.circuits(teacher='zoo:tiny-teacher', device='cpu')\n"
        "def test_gate(teacher):\n    pass\n")
    result = pytester.runpytest_subprocess("--circuits-require-gpu")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--circuits-require-gpu was given but models would load on "
                                 "the CPU (device 'cpu'*"])


# ----------------------------------------------------------------------------- threads, cuda:auto


def test_the_default_thread_count_shares_the_cores_among_the_workers() -> None:
    assert default_threads(16, 4) == 4
    assert default_threads(2, 6) == 1  # never zero
    assert default_threads(8, 1) == 8
    assert default_threads(7, 2) == 3


def test_cuda_auto_spreads_workers_over_the_devices() -> None:
    assert [spread_device(f"gw{n}", 3) for n in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert spread_device(None, 2) == "cuda:0"  # a serial run
    assert spread_device("gw5", 0) == "cpu"


THREADS_SUITE = '''
import os
import sys

import pytest
import torch

from pytest_circuits.fixtures import run_device


def test_thread_count(request):
    assert torch.get_num_threads() == int(os.environ["EXPECT_THREADS"])


def test_cuda_auto(request, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(os.environ["DEVICES"]))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])
    expected = f"cuda:{worker % 2}" if os.environ["DEVICES"] == "2" else "cpu"
    assert run_device(request.config, "cuda:auto") == expected
    print("DEVICE", os.environ.get("PYTEST_XDIST_WORKER"), expected)
'''


@pytest.mark.slow
def test_threads_and_cuda_auto_are_applied_per_worker(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text(THREADS_SUITE)
    (tmp_path / "test_two.py").write_text(THREADS_SUITE)  # a file for each worker
    run = run_pytest(tmp_path, "-p", "xdist", "-n", "2", "--dist", "loadfile",
                     "--circuits-threads=3", env={"EXPECT_THREADS": "3", "DEVICES": "2"})
    run.assert_outcomes(passed=4)
    run = run_pytest(tmp_path, "test_one.py", "-k", "thread_count", "--circuits-threads=2",
                     env={"EXPECT_THREADS": "2"})
    run.assert_outcomes(passed=1, deselected=1)
    run = run_pytest(tmp_path, "test_one.py", "-k", "cuda_auto", env={"DEVICES": "0"})
    run.assert_outcomes(passed=1, deselected=1, warnings=1)
    assert "cuda:auto found no CUDA device" in "\n".join(run.outlines)
    run = run_pytest(tmp_path, "test_one.py", "-k", "cuda_auto", "--circuits-require-gpu",
                     env={"DEVICES": "0"})
    run.assert_outcomes(failed=1, deselected=1)
    assert "cuda:auto found no CUDA device" in "\n".join(run.outlines)


# ----------------------------------------------------------------------------- interruptions


INTERRUPT_SUITE = '''
import os
import signal

import fakegates


def test_a_first():
    fakegates.aligned(0.9, subject="a -> first")


def test_b_stop():
    fakegates.aligned(0.95, subject="a -> second")
    if os.environ.get("STOP") == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    raise KeyboardInterrupt


def test_c_never_runs():
    fakegates.aligned(0.1, subject="a -> third")
'''


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["keyboard", "sigterm"])
def test_an_interrupted_run_leaves_an_incomplete_json_and_the_baseline_intact(
    tmp_path: Path, stop: str
) -> None:
    (tmp_path / "fakegates.py").write_text(FAKE_GATES)
    (tmp_path / "test_stop.py").write_text(INTERRUPT_SUITE)
    first = run_pytest(tmp_path, "-k", "first", "--circuits-baseline=base.json",
                       "--circuits-update-baseline")
    first.assert_outcomes(passed=1, deselected=2)
    before = (tmp_path / "base.json").read_bytes()
    run = run_pytest(tmp_path, "--circuits-json=out.json", "--circuits-baseline=base.json",
                     "--circuits-update-baseline", env={"STOP": stop})
    assert run.ret == pytest.ExitCode.INTERRUPTED
    document = load_json(tmp_path / "out.json")
    assert document["complete"] is False
    expected = "SIGTERM" if stop == "sigterm" else "KeyboardInterrupt"
    assert document["interruption"].startswith(expected)
    assert (tmp_path / "base.json").read_bytes() == before  # not half updated
    assert document["baseline"]["written"] is False
    assert [r["subject"] for r in document["results"]] == ["a -> first", "a -> second"]
    assert "NOT updated: the run was interrupted" in "\n".join(run.outlines)


@pytest.mark.slow
def test_a_complete_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "fakegates.py").write_text(FAKE_GATES)
    (tmp_path / "test_stop.py").write_text(INTERRUPT_SUITE)
    run = run_pytest(tmp_path, "-k", "first", "--circuits-json=out.json")
    run.assert_outcomes(passed=1, deselected=2)
    document = load_json(tmp_path / "out.json")
    assert (document["complete"], document["interruption"]) == (True, None)
    assert document["threads"]["per_process"] >= 1


# ----------------------------------------------------------------------------- unwritable paths


@pytest.mark.parametrize(
    ("option", "shown"),
    [
        ("--circuits-json=blocker/out.json", "--circuits-json: cannot write"),
        ("--circuits-html=blocker/report.html", "--circuits-html: cannot write"),
        ("--circuits-cache-dir=blocker/cache", "--circuits-cache-dir: cannot write"),
        ("--circuits-json=adir", "is a directory, not a file"),
    ],
)
def test_an_unwritable_output_is_a_usage_error_at_startup(
    pytester: pytest.Pytester, option: str, shown: str
) -> None:
    pytester.path.joinpath("blocker").write_text("a file where a folder should be")
    pytester.path.joinpath("adir").mkdir()
    pytester.makepyfile("def test_nothing():\n    raise AssertionError('ran')\n")
    result = pytester.runpytest(option, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert shown in result.stderr.str()
    assert "blocker" in result.stderr.str() or "adir" in result.stderr.str()


def test_an_unwritable_baseline_to_update_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("blocker").write_text("")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--circuits-baseline=blocker/base.json",
                                "--circuits-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--circuits-baseline: cannot write" in result.stderr.str()
    assert "blocker is a file" in result.stderr.str()


# ----------------------------------------------------------------------------- permissions


def test_written_files_respect_the_umask_and_keep_an_existing_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "fresh.json", b"{}")
        os.umask(0o002)
        write_bytes_atomic(tmp_path / "open.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "open.json").stat().st_mode) == 0o664
    (tmp_path / "open.json").chmod(0o600)  # the user's own choice survives a rewrite
    write_bytes_atomic(tmp_path / "open.json", b"[]")
    assert stat.S_IMODE((tmp_path / "open.json").stat().st_mode) == 0o600
    assert (tmp_path / "open.json").read_bytes() == b"[]"


# ----------------------------------------------------------------------------- HTML report


HTML_SUITE = '''
import fakegates


def test_good():
    fakegates.aligned(0.9)
'''


@pytest.mark.slow
def test_the_html_option_writes_the_report_of_the_merged_run(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    (tmp_path / "fakegates.py").write_text(FAKE_GATES)
    (tmp_path / "test_html.py").write_text(HTML_SUITE)
    (tmp_path / "conftest.py").write_text(
        "import json\nimport pytest_circuits.htmlreport as h\n\n"
        "def fake(path, records):\n"
        "    path.parent.mkdir(parents=True, exist_ok=True)\n"
        "    open(path, 'w').write(json.dumps([r.result.subject + ':' + r.verdict "
        "for r in records]))\n\n"
        "h.write_session_report = fake\n")
    run = run_pytest(tmp_path, "-p", "xdist", "-n", "2", "--circuits-html=out/report.html")
    run.assert_outcomes(passed=1)
    assert json.loads((tmp_path / "out" / "report.html").read_text()) == [
        "teacher -> student:PASS"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]


