"""Tests of the bundled zoo: manifest integrity, loading, each model's bar, the training script."""

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
from pytest_circuits.zoo.families import FAMILIES, ZooConfig, distilbert_from_bert  # noqa: E402
from pytest_circuits.zoo.language import (  # noqa: E402
    MASK_TOKEN,
    build_masked_tokenizer,
    build_tokenizer,
    build_vocab,
)
from pytest_circuits.zoo.train import MODEL_NAMES, masked_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 4321  # neither the training seed nor the README's evaluation seed
GPT2_MODELS = FAMILIES["gpt2"].model_names
#: The newer families, loaded straight from their directories with plain transformers.
OTHER_FAMILIES = ("bert", "llama")
OTHER_MODELS = tuple(n for f in OTHER_FAMILIES for n in FAMILIES[f].model_names)
TEACHERS = {family.teacher.name for family in FAMILIES.values()}


def _load(path: Path, masked: bool) -> tuple[object, object]:
    auto = transformers.AutoModelForMaskedLM if masked else transformers.AutoModelForCausalLM
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=False
    )
    model = auto.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    model.eval()
    return tokenizer, model


def _is_masked(name: str) -> bool:
    return any(f.objective == "masked" and name in f.model_names for f in FAMILIES.values())


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[object, object]]:
    return {name: _load(zoo_path(name), masked=False) for name in GPT2_MODELS}


@pytest.fixture(scope="module")
def loaded_other() -> dict[str, tuple[object, object]]:
    return {
        name: _load(ZOO_DIR / "models" / name, masked=_is_masked(name)) for name in OTHER_MODELS
    }


def _scores(
    tokenizer: object, model: object, task_name: str, n: int, masked: bool = False
) -> tuple[float, float]:
    """(top-1 accuracy, mean logit difference) at the prediction position (last or [MASK])."""
    task = builtin_task(task_name, n_prompts=n, seed=HELD_OUT_SEED)
    enc = encode_task(task, tokenizer, masked=masked)
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
    assert listed == set(MODEL_NAMES)
    assert set(ZOO_MODELS) <= listed
    for name in MODEL_NAMES:
        for required in ("config.json", "model.safetensors", "tokenizer.json"):
            assert f"models/{name}/{required}" in manifest["files"]

    def size(names: tuple[str, ...]) -> int:
        return sum((ZOO_DIR / p).stat().st_size for p in manifest["files"]
                   if Path(p).parts[1] in names)

    assert size(GPT2_MODELS) <= 7_000_000
    assert size(OTHER_MODELS) <= 10_000_000


def test_gpt2_zoo_files_are_the_original_build() -> None:
    # The GPT-2 family predates the other families; adding them must not change its bytes.
    files = load_manifest()["files"]
    assert files["models/tiny-teacher/model.safetensors"].startswith("49bf675d")
    assert files["models/tiny-student/model.safetensors"].startswith("393cf047")
    assert files["models/tiny-student-brittle/model.safetensors"].startswith("a880ac3c")
    assert files["models/tiny-teacher/tokenizer.json"].startswith("af526111")


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


def test_masked_tokenizer_extends_the_causal_one() -> None:
    causal, masked = build_tokenizer(), build_masked_tokenizer()
    words = build_vocab()
    assert len(masked) == len(causal) + 1 == len(words) + 1
    assert all(masked.convert_tokens_to_ids(w) == causal.convert_tokens_to_ids(w) for w in words)
    assert masked.mask_token == MASK_TOKEN and masked.mask_token_id == len(words)
    ids = masked("Van done in 1. Sun done in [MASK]")["input_ids"]
    assert masked.convert_ids_to_tokens(ids) == [
        "<bos>", "Van", "done", "in", "1", ".", "Sun", "done", "in", MASK_TOKEN
    ]


def test_masked_batch_masks_answers_and_random_words() -> None:
    tokenizer = build_masked_tokenizer()
    docs = ["When Mary and John went to the store, John gave a drink to Mary."] * 64
    encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(docs)["input_ids"]]
    ids = torch.tensor(encoded)
    mask = torch.ones_like(ids)
    config = ZooConfig(answer_share=0.5, truncate_share=0.5, mask_rate=0.3)
    batch = masked_batch(ids, mask, tokenizer, config, torch.Generator().manual_seed(0))
    answer = ids.size(1) - 3  # "... to Mary . <eos>"
    mary = tokenizer.convert_tokens_to_ids("Mary")
    answer_docs = truncated = 0
    for row in range(ids.size(0)):
        targets = batch.targets[row]
        assert torch.equal(batch.scored[row], targets != -100)
        # every scored position holds its original word as the target
        assert torch.equal(targets[batch.scored[row]], ids[row][batch.scored[row]])
        if batch.input_ids[row, answer] == tokenizer.mask_token_id and targets[answer] == mary \
                and int(batch.scored[row].sum()) == 1:
            answer_docs += 1
            if batch.attention_mask[row].sum() == answer + 1:  # ends at the [MASK]
                truncated += 1
                assert (batch.input_ids[row, answer + 1 :] == tokenizer.pad_token_id).all()
        else:
            # random masking never touches <bos>/<eos> and leaves the document whole
            assert not batch.scored[row, 0] and not batch.scored[row, -1]
            assert int(batch.attention_mask[row].sum()) == ids.size(1)
    assert 20 <= answer_docs <= 44 and 5 <= truncated <= answer_docs - 5


@pytest.mark.parametrize("name", OTHER_MODELS)
def test_other_families_load_offline_with_expected_shapes(
    loaded_other: dict[str, tuple[object, object]], name: str
) -> None:
    tokenizer, model = loaded_other[name]
    config = model.config  # type: ignore[attr-defined]
    expected = {
        "tiny-bert-teacher": ("bert", "BertForMaskedLM", "num_hidden_layers", 4),
        "tiny-distilbert-student": ("distilbert", "DistilBertForMaskedLM", "n_layers", 2),
        "tiny-llama-teacher": ("llama", "LlamaForCausalLM", "num_hidden_layers", 4),
        "tiny-llama-student-depth": ("llama", "LlamaForCausalLM", "num_hidden_layers", 2),
    }[name]
    model_type, class_name, layers_key, layers = expected
    assert config.model_type == model_type and type(model).__name__ == class_name
    assert getattr(config, layers_key) == layers
    assert tokenizer("When Mary and John")["input_ids"][0] == tokenizer.bos_token_id  # type: ignore[operator,attr-defined]
    if _is_masked(name):
        assert tokenizer.mask_token == MASK_TOKEN  # type: ignore[attr-defined]
        assert config.vocab_size == len(build_vocab()) + 1
    else:
        assert tokenizer.mask_token is None  # type: ignore[attr-defined]
        # grouped-query attention: 4 query heads share 2 key/value heads
        assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)


@pytest.mark.parametrize("task_name", BUILTIN_TASKS)
@pytest.mark.parametrize("name", OTHER_MODELS)
def test_other_families_solve_the_tasks(
    loaded_other: dict[str, tuple[object, object]], name: str, task_name: str
) -> None:
    accuracy, logit_diff = _scores(*loaded_other[name], task_name, 40, masked=_is_masked(name))
    assert accuracy >= (0.95 if name in TEACHERS else 0.85)
    assert logit_diff > 1.0


def test_distilbert_map_from_bert_is_exact(loaded_other: dict[str, tuple[object, object]]) -> None:
    # Mapping all four BERT layers must reproduce the BERT (token-type folded into positions).
    tokenizer, bert = loaded_other["tiny-bert-teacher"]
    full = distilbert_from_bert(bert, ZooConfig(), tokenizer, [0, 1, 2, 3])  # type: ignore[arg-type]
    full.eval()
    ids = torch.tensor([tokenizer("Van done in 1. Hat done in 2. Sun done in [MASK]")["input_ids"]])  # type: ignore[operator]
    with torch.no_grad():
        expected = bert(input_ids=ids).logits  # type: ignore[operator]
        actual = full(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_students_record_their_teacher_layers() -> None:
    metrics = load_manifest()["metrics"]
    assert metrics["tiny-distilbert-student"]["teacher_layers"] == [0, 2]
    depth = metrics["tiny-llama-student-depth"]
    losses = depth["dropped_block_loss"]
    cheapest = min(losses, key=lambda block: losses[block])
    first, last = (int(k) for k in cheapest.split("-"))
    assert depth["teacher_layers"] == [k for k in range(4) if not first <= k <= last]


def test_manifest_numbers_are_what_the_readme_reports() -> None:
    metrics = load_manifest()["metrics"]
    readme = (ZOO_DIR / "README.md").read_text()
    for name in MODEL_NAMES:
        for task_name in BUILTIN_TASKS:
            row = metrics[name]["tasks"][task_name]
            assert f"{100 * row['accuracy']:.1f}" in readme
            assert f"{row['logit_diff']:.2f}" in readme


def _run_training(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest_circuits.zoo.train", "--out", str(out),
               "--steps-scale", "0.002", "--eval-prompts", "8", "--seed", "3", "--jobs", "1",
               *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_training_script_smoke(tmp_path: Path) -> None:
    # Every recipe of every family runs a few steps, and the result loads with plain transformers.
    done = _run_training(tmp_path)
    for name in MODEL_NAMES:
        assert name in done.stdout
    assert "logit diff" in done.stdout
    verify_zoo(tmp_path)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["seed"] == 3 and manifest["steps_scale"] == 0.002
    assert set(manifest["families"]) == set(FAMILIES)
    layers = {"tiny-teacher": 4, "tiny-bert-teacher": 4, "tiny-llama-teacher": 4}
    for name in MODEL_NAMES:
        _, model = _load(tmp_path / "models" / name, masked=_is_masked(name))
        config = model.config  # type: ignore[attr-defined]
        n_layer = getattr(config, "n_layer", None) or getattr(config, "n_layers", None) \
            or config.num_hidden_layers
        assert n_layer == layers.get(name, 2)
        assert set(manifest["metrics"][name]["tasks"]) == set(BUILTIN_TASKS)

    # Rebuilding one family reproduces its bytes and keeps the other families' entries.
    before = manifest["files"]
    _run_training(tmp_path, "--family", "llama")
    verify_zoo(tmp_path)
    after = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert after["files"] == before
    assert after["metrics"] == manifest["metrics"]
