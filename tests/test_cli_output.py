"""What the command line shows: progress a CI log can read, silence under -q (the libraries'
loading bars included), model sources in --help, and accuracy in its tables and ranking."""

from __future__ import annotations

import io
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from pytest_circuits import cache, progress
from pytest_circuits.cli import (
    EXIT_OK,
    Candidate,
    Finding,
    Progress,
    _why,
    library_bars_off,
    main,
    rank_candidates,
)

TEACHER, GOOD = "zoo:tiny-teacher", "zoo:tiny-student"


@pytest.fixture(autouse=True)
def _restore_cache_settings() -> Iterator[None]:
    saved = dict(cache._settings)
    yield
    cache._settings.update(saved)


# ----------------------------------------------------------------------------- progress


def test_without_a_terminal_a_long_sweep_prints_its_count_in_whole_lines() -> None:
    stream = io.StringIO()  # not a TTY, like a CI log
    bar = Progress(2, stream=stream)
    bar.sweep_lines_after = 0.0  # every sweep counts as long
    with bar.step("numerals: zoo:tiny-teacher"):
        for done in range(1, 9):
            progress.report("zoo:tiny-teacher", done, 8)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/2] numerals: zoo:tiny-teacher ..."
    assert lines[1].startswith("  circuits: sweeping zoo:tiny-teacher: 1/8 ablations after ")
    assert [line.split(": ")[2].split(" ")[0] for line in lines[1:-1]] == ["1/8", "2/8", "4/8",
                                                                           "6/8"]
    assert lines[-1].startswith("  circuits: swept zoo:tiny-teacher: 8 ablations in ")
    assert "\r" not in stream.getvalue()


def test_a_quick_sweep_prints_only_its_step() -> None:
    stream = io.StringIO()
    bar = Progress(1, stream=stream)
    with bar.step("numerals: m"):
        for done in range(1, 5):
            progress.report("m", done, 4)
    assert stream.getvalue() == "[1/1] numerals: m ...\n"


def test_quiet_loading_switches_the_library_bars_off_and_back() -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf_module
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    drawn_with = gguf_module.tqdm
    with library_bars_off():
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf_module.tqdm is hf_logging.tqdm  # the GGUF conversion follows the switch
        assert list(gguf_module.tqdm(range(3), desc="silent")) == [0, 1, 2]
    assert hf_logging.is_progress_bar_enabled() and gguf_module.tqdm is drawn_with


@pytest.mark.slow
def test_quiet_prints_nothing_on_stderr_not_even_the_weight_loading_bar(
        capfd: pytest.CaptureFixture[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["compare", TEACHER, GOOD, "--task", "numerals", "--n-prompts", "4", "-q",
                 "--no-cache", "--device", "cpu"], out=out, err=err)
    assert code == EXIT_OK, err.getvalue()
    assert err.getvalue() == "" and "Loading weights" not in capfd.readouterr().err
    text = out.getvalue()
    assert "top-1 accuracy: teacher 4/4, student 4/4 (100.0% of the teacher's)" in text
    assert "answer probability: teacher 0." in text


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["compare", "calibrate", "rank"])
def test_help_says_what_a_model_may_be(command: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    assert "a save_pretrained directory, a hub id (openai-community/gpt2), a .gguf file" in text
    assert "--min-accuracy-retained" in text or command == "compare"


def test_top_level_help_names_gguf_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    assert "a .gguf file" in " ".join(capsys.readouterr().out.split())


# ----------------------------------------------------------------------------- ranking


def _candidate(source: str, accuracy: float, alignment: float, blocking: int) -> Candidate:
    report = SimpleNamespace(
        task="ioi", alignment=SimpleNamespace(score=alignment, weighted_score=alignment),
        discarded=[], behavior_retained=100.0,
        student=SimpleNamespace(performance=SimpleNamespace(accuracy=accuracy, n_prompts=32),
                                brittleness=SimpleNamespace(severity=0.1)),
        teacher=SimpleNamespace(performance=SimpleNamespace(accuracy=1.0, n_prompts=32)))
    found = [Finding("ioi", f"finding {i}") for i in range(blocking)]
    return Candidate(source, [report], found)


def test_a_candidate_that_names_the_answer_ranks_above_one_that_never_does() -> None:
    """The SmolLM2 case: the depth-pruned copy computes more like its teacher (A 0.99) but
    never names the answer; the head-pruned one is right 21 times of 32."""
    depth = _candidate("depth-pruned", 0.0, 0.99, blocking=1)
    heads = _candidate("head-pruned", 21 / 32, 0.95, blocking=1)
    assert [c.source for c in rank_candidates([depth, heads])] == ["head-pruned",
                                                                    "depth-pruned"]
    assert _why(heads, depth) == "top-1 accuracy 65.6% of the teacher's against 0.0%"


def test_blocking_findings_still_come_first() -> None:
    clean = _candidate("clean", 0.5, 0.9, blocking=0)
    accurate = _candidate("accurate", 1.0, 0.9, blocking=1)
    assert [c.source for c in rank_candidates([accurate, clean])] == ["clean", "accurate"]


def test_equal_accuracy_leaves_the_order_to_alignment() -> None:
    a = _candidate("a", 1.0, 0.7, blocking=0)
    b = _candidate("b", 1.0, 0.9, blocking=0)
    assert [c.source for c in rank_candidates([a, b])] == ["b", "a"]
    assert _why(b, a) == "alignment 0.900 against 0.700"
