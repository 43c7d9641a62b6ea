"""A session loads each model once whatever the path spelling (``./m``, ``m``, ``../dir/m``),
and a model path in a gate file is read from the gate file's directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits import fixtures
from pytest_circuits.fixtures import ModelMemo
from pytest_circuits.gatefile import GateFileError, gate_file_source, load_gate_file
from pytest_circuits.models import load_model


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo teacher saved as a plain model directory, ``<tmp>/releases/teacher``."""
    target = tmp_path_factory.mktemp("memo") / "releases" / "teacher"
    load_model("zoo:tiny-teacher", device="cpu").save_pretrained(target)
    return target


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source of every model the memo loads during the test."""
    calls: list[str] = []
    real = fixtures.load_model

    def counting(source: Any, **kwargs: Any) -> Any:
        calls.append(str(source))
        return real(source, **kwargs)

    monkeypatch.setattr(fixtures, "load_model", counting)
    return calls


def test_three_spellings_of_one_path_load_once(saved_teacher: Path, loads: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    releases = saved_teacher.parent
    (releases.parent / "tests").mkdir(exist_ok=True)
    monkeypatch.chdir(releases)
    memo = ModelMemo()
    option = memo.model("./teacher", device="cpu", dtype="float32")
    ini = memo.model("teacher", device="cpu", dtype="float32")
    marker = memo.model(str(releases.parent / "tests" / ".." / "releases" / "teacher"),
                        name="../releases/teacher", device="cpu", dtype="float32")
    assert loads == ["./teacher"]
    # each keeps the name it was asked by (results and baseline keys use it)
    assert [m.name for m in (option, ini, marker)] == ["./teacher", "teacher",
                                                       "../releases/teacher"]
    assert ini.bridge is option.bridge and marker.tokenizer is option.tokenizer
    assert ini.analysis_memo is not option.analysis_memo  # its own: its entries may name it
    # asked again, each name gets the same object (a pair of them is memoised by identity)
    assert memo.model("teacher", device="cpu", dtype="float32") is ini
    assert memo.model("./teacher", device="cpu", dtype="float32") is option
    # another dtype is another load
    memo.model("teacher", device="cpu", dtype="bfloat16")
    assert len(loads) == 2


def test_a_failed_load_fails_every_spelling_without_loading_again(
        tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    monkeypatch.chdir(tmp_path)
    memo = ModelMemo()
    with pytest.raises(Exception, match="config.json"):
        memo.model("./broken", device="cpu", dtype="float32")
    with pytest.raises(Exception, match="config.json"):
        memo.model("broken", device="cpu", dtype="float32")
    assert loads == ["./broken"]


GATES = """\
models:
  release: {source}
gates:
  - name: release-parity
    model: release
    task: numerals
    n_prompts: 4
    bridge_parity: {{rtol: 0.001}}
"""


def test_a_gate_file_reads_a_model_path_from_its_own_directory(
        saved_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = saved_teacher.parent  # the gate file lies next to the model directory
    gate_file = sub / "circuits.yaml"
    gate_file.write_text(GATES.format(source="teacher"))
    monkeypatch.chdir(sub.parent)  # run from the parent directory
    [spec] = load_gate_file(Path(sub.name) / "circuits.yaml")
    assert spec.subject.source == str(saved_teacher) and spec.subject.name == "teacher"
    gate_file.write_text(GATES.format(source="./teacher/"))
    [spec] = load_gate_file(gate_file)
    assert Path(spec.subject.source) == saved_teacher


def test_a_gate_file_path_that_exists_only_from_the_working_directory_is_refused(
        saved_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "gates"
    elsewhere.mkdir()
    gate_file = elsewhere / "circuits.yaml"
    gate_file.write_text(GATES.format(source="releases/teacher"))
    monkeypatch.chdir(saved_teacher.parent.parent)  # where releases/teacher exists
    with pytest.raises(GateFileError) as caught:
        load_gate_file(gate_file)
    message = str(caught.value)
    assert message.startswith(f"{gate_file}:2: model 'releases/teacher' is read from the gate "
                              f"file's directory ('{elsewhere}')")
    assert f"{elsewhere / 'releases' / 'teacher'}' does not exist" in message
    assert "write the path relative to the gate file, or absolute" in message


def test_gate_file_sources_by_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "gates"
    base.mkdir()
    (base / "here.gguf").write_bytes(b"GGUF")
    assert gate_file_source("zoo:tiny-teacher", base) == "zoo:tiny-teacher"
    assert gate_file_source("openai-community/gpt2", base) == "openai-community/gpt2"
    assert gate_file_source("here.gguf", base) == str(base / "here.gguf")
    # a missing path stays next to the gate file: the load names that place
    assert gate_file_source("./missing", base) == str(base / "missing")
    assert gate_file_source("../x/y/z.gguf", base) == os.path.join(str(base), "../x/y/z.gguf")
    assert gate_file_source("/abs/model", base) == "/abs/model"


def test_a_plugin_session_loads_a_gate_files_model_once_for_every_gate(
        pytester: pytest.Pytester, saved_teacher: Path, loads: list[str]) -> None:
    release = pytester.path / "release"
    release.symlink_to(saved_teacher, target_is_directory=True)
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "circuits.yaml").write_text("""\
models:
  release: ../release
  again: ../sub/../release/
gates:
  - name: parity-one
    model: release
    task: numerals
    n_prompts: 4
    bridge_parity: {rtol: 0.001}
  - name: parity-two
    model: again
    task: numerals
    n_prompts: 4
    bridge_parity: {rtol: 0.001}
""")
    (pytester.path / "circuits.yaml").write_text("""\
models:
  release: release
gates:
  - name: parity-three
    model: release
    task: numerals
    n_prompts: 4
    bridge_parity: {rtol: 0.001}
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "--circuits-device=cpu")
    result.assert_outcomes(passed=3)
    assert len(loads) == 1  # a symbolic link and three spellings: one model
