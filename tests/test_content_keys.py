"""Content-addressed analyses: one model loaded under two names, or from two paths, is swept
once (in memory and from disk), and every result served names the model that asked for it."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits import cache
from pytest_circuits.analysis import ablation
from pytest_circuits.analysis.cached import pair_report
from pytest_circuits.analysis.comparison import model_report
from pytest_circuits.analysis.store import model_parts, sweep_result, task_performance
from pytest_circuits.config import context
from pytest_circuits.models import (
    CircuitModel,
    canonical_source,
    load_model,
    load_pair,
    tokenizer_digest,
)
from pytest_circuits.tasks import builtin_task

TASK = builtin_task("numerals", n_prompts=8)


@pytest.fixture(scope="module")
def twins() -> tuple[CircuitModel, CircuitModel]:
    """The zoo teacher loaded twice, under the names "a" and "b"."""
    return (load_model("zoo:tiny-teacher", name="a", device="cpu"),
            load_model("zoo:tiny-teacher", name="b", device="cpu"))


@pytest.fixture(scope="module")
def student() -> CircuitModel:
    return load_model("zoo:tiny-student", device="cpu")


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the model of every ``ablation.sweep`` call made during the test."""
    calls: list[str] = []
    real = ablation.sweep

    def counting(model: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(model.name)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ablation, "sweep", counting)
    return calls


@pytest.fixture
def memory() -> Iterator[None]:
    """A session of its own: an empty cache in memory, nothing on disk."""
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        yield


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A session of its own with an on-disk cache directory."""
    with context.changed(cache=context.CacheStore()):
        cache.configure(tmp_path / "cache", enabled=True)
        yield tmp_path / "cache"


def test_a_models_key_is_its_content_not_its_name(twins: tuple[CircuitModel, CircuitModel],
                                                  student: CircuitModel) -> None:
    a, b = twins
    assert model_parts(a, TASK) == model_parts(b, TASK)
    assert "name" not in model_parts(a, TASK)
    assert model_parts(a, TASK)["tokenizer"] == tokenizer_digest(a.tokenizer)
    assert model_parts(a, TASK) != model_parts(student, TASK)  # other weights


def test_the_tokenizer_digest_tells_tokenizers_apart_and_is_computed_once(
        twins: tuple[CircuitModel, CircuitModel], student: CircuitModel) -> None:
    a, b = twins
    assert a.tokenizer_digest == b.tokenizer_digest and len(a.tokenizer_digest) == 64
    other = copy.copy(a)
    other.tokenizer = copy.deepcopy(a.tokenizer)
    other.tokenizer.add_tokens(["zzzunseen"])
    # a copy given another tokenizer gets its own digest: the same weights read other ids
    assert other.tokenizer_digest != a.tokenizer_digest
    assert model_parts(other, TASK) != model_parts(a, TASK)
    assert a.tokenizer_digest == tokenizer_digest(a.tokenizer)  # the original's is unchanged


def test_one_sweep_for_two_names_in_memory_each_named_as_asked(
        twins: tuple[CircuitModel, CircuitModel], sweeps: list[str], memory: None) -> None:
    a, b = twins
    first = sweep_result(a, TASK)
    second = sweep_result(b, TASK)
    assert sweeps == ["a"]
    assert first.model.name == "a" and second.model.name == "b"
    assert first.performance.model == "a" and second.performance.model == "b"
    assert second.effects is first.effects  # relabelled, not copied
    assert second.model.weights_sha256 == first.model.weights_sha256
    # the report of each names its own model too, and costs no sweep
    report_b = model_report(b, TASK)
    assert report_b.model.name == "b" and report_b.sweep.model.name == "b"
    assert report_b.performance.model == "b"
    assert task_performance(b, TASK).model == "b"
    assert sweeps == ["a"]


def test_one_sweep_for_two_names_across_sessions_on_disk(
        twins: tuple[CircuitModel, CircuitModel], sweeps: list[str], disk: Path) -> None:
    a, b = twins
    sweep_result(a, TASK)
    assert len(list(disk.glob("sweep-*.json"))) == 1
    cache.forget()  # a new session: only the disk entry is left
    served = sweep_result(b, TASK)
    assert sweeps == ["a"]
    assert served.model.name == "b" and served.performance.model == "b"


def test_a_saved_copy_in_another_directory_shares_the_sweep(
        twins: tuple[CircuitModel, CircuitModel], sweeps: list[str], disk: Path,
        tmp_path: Path) -> None:
    a, _ = twins
    saved = a.save_pretrained(tmp_path / "elsewhere" / "copy")
    moved = load_model(saved, device="cpu")
    assert moved.weights_fingerprint == a.weights_fingerprint
    assert moved.tokenizer_digest == a.tokenizer_digest
    sweep_result(a, TASK)
    cache.forget()
    served = sweep_result(moved, TASK)
    assert sweeps == ["a"]
    assert served.model.name == str(saved) and served.model.source == moved.source


def test_a_pair_report_is_shared_and_relabelled(twins: tuple[CircuitModel, CircuitModel],
                                               student: CircuitModel, sweeps: list[str],
                                               disk: Path) -> None:
    a, b = twins
    first = pair_report(load_pair(a, student), TASK)
    assert sorted(sweeps) == sorted(["a", student.name])
    cache.forget()
    renamed = copy.copy(student)
    renamed.name = "student-again"
    second = pair_report(load_pair(b, renamed), TASK)
    assert len(sweeps) == 2  # the pair entry on disk served: nothing swept again
    assert second.teacher.model.name == "b" and second.teacher.sweep.model.name == "b"
    assert second.student.model.name == "student-again"
    assert second.student.sweep.model.name == "student-again"
    assert second.student.performance.model == "student-again"
    assert second.alignment.score == first.alignment.score
    assert first.teacher.model.name == "a"  # the first report keeps its own names


def test_an_unchanged_report_is_returned_as_it_is(twins: tuple[CircuitModel, CircuitModel],
                                                 student: CircuitModel, memory: None) -> None:
    a, _ = twins
    pair = load_pair(a, student)
    assert pair_report(pair, TASK) is pair_report(pair, TASK)


def test_a_component_subset_sweeps_every_component_once(
        twins: tuple[CircuitModel, CircuitModel], sweeps: list[str], memory: None) -> None:
    a, b = twins
    heads = sweep_result(a, TASK, components="heads")
    assert [e.kind for e in heads.effects] == ["head"] * (a.n_layers * a.n_heads)
    full = sweep_result(b, TASK)  # every component: the sweep made for the heads serves it
    assert sweeps == ["a"]
    assert len(full.effects) == a.n_layers * (a.n_heads + 1) and full.model.name == "b"
    # a small explicit subset is swept on its own (a full sweep could cost far more)
    other = load_model("zoo:tiny-student", device="cpu")
    sweep_result(other, TASK, components=["L0H0"])
    assert len(sweeps) == 2


def test_canonical_source_joins_spellings_of_one_path(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "releases" / "teacher.Q4_1.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF")
    (tmp_path / "tests").mkdir()
    monkeypatch.chdir(tmp_path / "releases")
    expected = os.path.realpath(target)
    assert canonical_source("./teacher.Q4_1.gguf") == expected
    assert canonical_source("teacher.Q4_1.gguf") == expected
    assert canonical_source("../tests/../releases/teacher.Q4_1.gguf") == expected
    assert canonical_source(target) == expected
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    assert canonical_source(str(link)) == expected
    # names that are not local files stay as written
    assert canonical_source("zoo:tiny-teacher") == "zoo:tiny-teacher"
    assert canonical_source("openai-community/gpt2") == "openai-community/gpt2"


def test_a_release_session_sweeps_the_teacher_once_and_each_student_once(
        sweeps: list[str], memory: None) -> None:
    """One teacher, two students, one task: a heads-only robust gate first, then behaviour,
    alignment (recommended preset, both scores) and robustness against the teacher, for each
    student, with the teacher loaded under two names: one sweep per model."""
    from pytest_circuits import (
        assert_ablation_robust,
        assert_behavior_preserved,
        assert_circuit_aligned,
    )
    from pytest_circuits.errors import CircuitAssertionError

    teacher = load_model("zoo:tiny-teacher", device="cpu")
    twin = load_model("zoo:tiny-teacher", name="teacher-again", device="cpu")
    students = [load_model(f"zoo:{name}", device="cpu")
                for name in ("tiny-student", "tiny-student-brittle")]
    for index, student in enumerate(students):
        pair = load_pair(teacher if index == 0 else twin, student)
        for gate in (
            lambda p: assert_ablation_robust(p, "numerals", max_single_drop=100.0,
                                             components="heads", n_prompts=8),
            lambda p: assert_behavior_preserved(p, "numerals", min_retained=10.0, n_prompts=8),
            lambda p: assert_circuit_aligned(p, "numerals", preset="recommended", min_score=0.1,
                                             min_weighted_score=0.1, n_prompts=8),
            lambda p: assert_ablation_robust(p, "numerals", max_severity_increase=1.0,
                                             n_prompts=8),
        ):
            try:
                gate(pair)
            except CircuitAssertionError:
                pass  # a verdict either way: only the sweeps are counted here
    assert sorted(sweeps) == sorted(["zoo:tiny-teacher", "zoo:tiny-student",
                                     "zoo:tiny-student-brittle"])
