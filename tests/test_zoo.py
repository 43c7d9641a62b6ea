"""Tests of the bundled zoo: manifest integrity, loading, the teacher's bar, the training script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_circuits.tasks import BUILTIN_TASKS, builtin_task, encode_task  # noqa: E402
from pytest_circuits.zoo import (  # noqa: E402
    ZOO_DIR,
    ZOO_MODELS,
    ZooIntegrityError,
    load_manifest,
    verify_zoo,
    zoo_path,
)

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 4321  # neither the training seed nor the README's evaluation seed


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[object, object]]:
    out = {}
    for name in ZOO_MODELS:
        path = zoo_path(name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
        model.eval()
        out[name] = (tokenizer, model)
    return out


def _scores(tokenizer: object, model: object, task_name: str, n: int) -> tuple[float, float]:
    """(top-1 accuracy, mean logit difference) at the prediction position."""
    enc = encode_task(builtin_task(task_name, n_prompts=n, seed=HELD_OUT_SEED), tokenizer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(enc.tokens)).logits  # type: ignore[operator]
    rows = torch.arange(len(enc))
    final = logits[rows, torch.tensor(enc.positions)]
    correct, distractor = torch.tensor(enc.correct_ids), torch.tensor(enc.distractor_ids)
    diff = final[rows, correct] - final[rows, distractor]
    return float((final.argmax(-1) == correct).float().mean()), float(diff.mean())


def test_manifest_matches_files() -> None:
    verify_zoo()
    manifest = load_manifest()
    listed = {Path(p).parts[1] for p in manifest["files"]}
    assert listed == set(ZOO_MODELS)
    for name in ZOO_MODELS:
        for required in ("config.json", "model.safetensors", "tokenizer.json"):
            assert f"models/{name}/{required}" in manifest["files"]
    total = sum((ZOO_DIR / p).stat().st_size for p in manifest["files"])
    assert total <= 10_000_000


def test_verify_zoo_names_the_bad_file(tmp_path: Path) -> None:
    shutil.copy(ZOO_DIR / "MANIFEST.json", tmp_path / "MANIFEST.json")
    shutil.copytree(ZOO_DIR / "models", tmp_path / "models")
    verify_zoo(tmp_path)
    config = tmp_path / "models" / "tiny-student" / "config.json"
    config.write_text(config.read_text().replace('"n_layer": 2', '"n_layer": 3'))
    with pytest.raises(ZooIntegrityError, match=r"models/tiny-student/config\.json: sha256"):
        verify_zoo(tmp_path)
    config.unlink()
    (tmp_path / "models" / "tiny-teacher" / "extra.bin").write_bytes(b"x")
    with pytest.raises(ZooIntegrityError) as info:
        verify_zoo(tmp_path)
    assert "models/tiny-student/config.json: missing" in str(info.value)
    assert "models/tiny-teacher/extra.bin: not in the manifest" in str(info.value)
    (tmp_path / "MANIFEST.json").unlink()
    with pytest.raises(ZooIntegrityError, match="MANIFEST.json is missing"):
        verify_zoo(tmp_path)


def test_zoo_path() -> None:
    assert zoo_path("tiny-teacher") == ZOO_DIR / "models" / "tiny-teacher"
    with pytest.raises(ValueError, match="tiny-teacher, tiny-student, tiny-student-brittle"):
        zoo_path("gpt2")


def test_models_load_with_expected_shapes(loaded: dict[str, tuple[object, object]]) -> None:
    layers = {"tiny-teacher": 4, "tiny-student": 2, "tiny-student-brittle": 2}
    for name, (tokenizer, model) in loaded.items():
        config = model.config  # type: ignore[attr-defined]
        assert config.model_type == "gpt2"
        assert (config.n_layer, config.n_head, config.n_embd) == (layers[name], 4, 128)
        assert tokenizer(" 5", add_special_tokens=False)["input_ids"] == [
            tokenizer.convert_tokens_to_ids("5")  # type: ignore[attr-defined]
        ]
        ids = tokenizer("When Mary and John")["input_ids"]  # type: ignore[operator]
        assert ids[0] == tokenizer.bos_token_id  # type: ignore[attr-defined]


def test_brittle_student_keeps_one_head_per_layer(
    loaded: dict[str, tuple[object, object]],
) -> None:
    model = loaded["tiny-student-brittle"][1]
    d_head = 128 // 4
    for block in model.transformer.h:  # type: ignore[attr-defined]
        w_o = block.attn.c_proj.weight
        live = [h for h in range(4) if w_o[h * d_head : (h + 1) * d_head].abs().sum() > 0]
        assert len(live) == 1
    good = loaded["tiny-student"][1]
    for block in good.transformer.h:  # type: ignore[attr-defined]
        w_o = block.attn.c_proj.weight
        assert all(w_o[h * d_head : (h + 1) * d_head].abs().sum() > 0 for h in range(4))


@pytest.mark.parametrize("task_name", BUILTIN_TASKS)
def test_teacher_meets_its_bar(loaded: dict[str, tuple[object, object]], task_name: str) -> None:
    accuracy, logit_diff = _scores(*loaded["tiny-teacher"], task_name, 40)
    assert accuracy >= 0.95
    assert logit_diff > 1.0


@pytest.mark.parametrize("task_name", BUILTIN_TASKS)
def test_students_are_valid_on_the_tasks(
    loaded: dict[str, tuple[object, object]], task_name: str
) -> None:
    accuracy, logit_diff = _scores(*loaded["tiny-student"], task_name, 40)
    assert accuracy >= 0.85 and logit_diff > 1.0
    brittle_accuracy, brittle_diff = _scores(*loaded["tiny-student-brittle"], task_name, 40)
    assert brittle_accuracy >= 0.85 and brittle_diff > 1.0


def test_manifest_numbers_are_what_the_readme_reports() -> None:
    metrics = load_manifest()["metrics"]
    readme = (ZOO_DIR / "README.md").read_text()
    for name in ZOO_MODELS:
        for task_name in BUILTIN_TASKS:
            row = metrics[name]["tasks"][task_name]
            assert f"{100 * row['accuracy']:.1f}" in readme
            assert f"{row['logit_diff']:.2f}" in readme


def test_training_script_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "pytest_circuits.zoo.train", "--out", str(tmp_path),
               "--steps-scale", "0.002", "--eval-prompts", "8", "--seed", "3", "--jobs", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny-student-brittle" in done.stdout and "logit diff" in done.stdout
    verify_zoo(tmp_path)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["seed"] == 3 and manifest["steps_scale"] == 0.002
    for name in ZOO_MODELS:
        path = tmp_path / "models" / name
        transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
        assert model.config.n_layer == (4 if name == "tiny-teacher" else 2)
        assert set(manifest["metrics"][name]["tasks"]) == set(BUILTIN_TASKS)
