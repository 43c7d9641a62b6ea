"""Plugin loading, settings (marker > option > ini), fixture errors and the gpu marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_json, run_pytest, shared_run

SETTINGS_SUITE = '''
import os
import sys

import pytest


def test_unmarked_test_gets_the_option_or_ini_task(circuit_task):
    assert circuit_task.name == os.environ["EXPECT_TASK"]
    assert len(circuit_task.prompts) == int(os.environ["EXPECT_N_PROMPTS"])


@pytest.mark.circuits(task="numerals", n_prompts=3)
def test_marker_beats_option_and_ini(circuit_task):
    assert (circuit_task.name, len(circuit_task.prompts)) == ("numerals", 3)


def test_models_stay_unloaded_until_a_test_asks():
    assert [m for m in ("torch", "transformers", "transformer_lens") if m in sys.modules] == []


def test_needs_a_teacher(circuit_pair):
    pass


@pytest.mark.circuits(n_prompts="many")
def test_bad_marker_value(circuit_task):
    pass


@pytest.mark.gpu
def test_on_a_gpu():
    pass
'''

PYPROJECT = """\
[tool.pytest.ini_options]
circuits_task = "ioi"
circuits_n_prompts = 5
circuits_json = "results/out.json"
"""


def test_loading_the_plugin_imports_no_heavy_library() -> None:
    code = (
        "import sys, pytest_circuits.plugin; "
        "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pytest.RunResult]:
    """The suite with only the pyproject.toml ini keys (and no CUDA)."""
    return shared_run(tmp_path_factory, "settings-suite",
                      {"test_settings.py": SETTINGS_SUITE, "pyproject.toml": PYPROJECT},
                      "--strict-markers", "-rs", "-k", "not unloaded",
                      env={"EXPECT_TASK": "ioi", "EXPECT_N_PROMPTS": "5",
                           "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def suite(shared: tuple[Path, pytest.RunResult]) -> Path:
    return shared[0]


@pytest.fixture(scope="module")
def from_ini(shared: tuple[Path, pytest.RunResult]) -> pytest.RunResult:
    return shared[1]


@pytest.mark.slow
def test_ini_keys_configure_the_fixtures_and_the_marker_beats_them(from_ini: pytest.RunResult
                                                                   ) -> None:
    from_ini.assert_outcomes(passed=2, errors=2, skipped=1, deselected=1)


@pytest.mark.slow
def test_an_ini_path_is_relative_to_the_ini_file(from_ini: pytest.RunResult, suite: Path
                                                 ) -> None:
    assert load_json(suite / "results" / "out.json")["results"] == []


@pytest.mark.slow
def test_a_missing_teacher_says_which_option_ini_key_or_marker_to_set(
    from_ini: pytest.RunResult,
) -> None:
    assert (
        "no teacher model is configured for this test: pass --circuits-teacher=SOURCE, set "
        "the ini key circuits_teacher (pytest.ini, or [tool.pytest.ini_options] in "
        "pyproject.toml), or mark the test @pytest.mark.circuits(teacher=SOURCE)"
    ) in from_ini.stdout.str()


@pytest.mark.slow
def test_a_bad_marker_value_fails_that_test_with_its_origin(from_ini: pytest.RunResult) -> None:
    assert "@pytest.mark.circuits(n_prompts=...): 'many' is not a whole number" in (
        from_ini.stdout.lines)
    assert "During handling" not in from_ini.stdout.str()


@pytest.mark.slow
def test_a_gpu_test_is_skipped_without_cuda(from_ini: pytest.RunResult) -> None:
    from_ini.stdout.fnmatch_lines(
        ["SKIPPED*test_settings.py:*marked gpu: CUDA is not available (pass "
         "--circuits-require-gpu to fail instead)"])


@pytest.mark.slow
def test_the_option_beats_the_ini_key_and_nothing_heavy_loads_without_need(suite: Path
                                                                           ) -> None:
    run = run_pytest(suite, "--circuits-task=numwords", "--circuits-n-prompts=4",
                     "-k", "unmarked or beats or unloaded",
                     env={"EXPECT_TASK": "numwords", "EXPECT_N_PROMPTS": "4"})
    run.assert_outcomes(passed=3, deselected=3)


@pytest.mark.slow
def test_require_gpu_fails_a_gpu_test_without_cuda(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pytester.makepyfile("import pytest\n\n@pytest.mark.gpu\ndef test_on_a_gpu():\n    pass\n")
    result = pytester.runpytest_subprocess("--circuits-require-gpu")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*marked gpu and --circuits-require-gpu was given, but CUDA is "
                                 "not available*"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--circuits-n-prompts=abc", "--circuits-n-prompts: 'abc' is not a whole number"),
        ("--circuits-n-prompts=0", "n_prompts must be at least 1, got 0"),
        ("--circuits-n-prompts=10001", "n_prompts must be at most 10,000"),
        ("--circuits-seed=-1", "--circuits-seed: seed must be at least 0, got -1"),
        ("--circuits-threads=0", "--circuits-threads: threads must be at least 1, got 0"),
        ("--circuits-threads=100000000", "threads must be at most 1024"),
        ("--circuits-device=cuda:x", "device 'cuda:x' is not one of auto, cpu, cuda, cuda:N, "
                                     "cuda:auto"),
        ("--circuits-device=tpu", "--circuits-device: device 'tpu' is not one of auto, cpu"),
        ("--circuits-dtype=int8", "--circuits-dtype: dtype 'int8' is not one of float32"),
    ],
)
def test_a_bad_option_value_is_a_usage_error(pytester: pytest.Pytester, option: str,
                                             message: str) -> None:
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_options_and_markers_are_documented(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    for flag in ("--circuits-teacher=SOURCE", "--circuits-student=SOURCE", "--circuits-task",
                 "--circuits-n-prompts", "--circuits-device", "--circuits-dtype",
                 "--circuits-no-cache", "--circuits-json", "--circuits-baseline",
                 "--circuits-update-baseline", "--circuits-require-gpu", "circuits_teacher",
                 "circuits_require_gpu", "--circuits-threads=N", "circuits_threads",
                 "--circuits-html=PATH", "circuits_html", "cuda:auto"):
        assert flag in help_text
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.circuits(teacher=, student=, task=" in markers
    assert "@pytest.mark.gpu: needs CUDA" in markers


def test_the_package_declares_its_command_extras_and_markers() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"pytest-circuits": "pytest_circuits.cli:main"}
    extras = project["project"]["optional-dependencies"]
    # transformers refuses to read GGUF without accelerate, so the gguf extra brings it too
    assert extras["gguf"] == ["gguf>=0.10", "accelerate>=0.26"]
    assert extras["multi-gpu"] == ["accelerate>=0.26"]
    markers = [m.split(":")[0] for m in project["tool"]["pytest"]["ini_options"]["markers"]]
    assert {"slow", "real"} <= set(markers)
