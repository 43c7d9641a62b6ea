"""Hostile inputs to loading and to the parity preflight (issue 17).

A config.json that disagrees with its weights, or declares impossible sizes, is refused before
anything is allocated, naming the key and the value; transformers' loading report (missing,
unexpected and mismatched weights) is a load error, not a silent random initialisation; a broken
GGUF file is named as one; an absurd OMP_NUM_THREADS is refused by name. The parity preflight is
kept per (model, task), and non-finite logits are named as such, with the prompts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import save_masked, save_tiny_gpt2, save_tiny_llama

from pytest_circuits import parity
from pytest_circuits.analysis import engine
from pytest_circuits.errors import ModelLoadError
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.settings import MAX_THREADS, exported_threads, thread_count
from pytest_circuits.tasks import Task, builtin_task

# --------------------------------------------------------------------------- helpers


def edited_copy(source: Path, target: Path, **config: Any) -> Path:
    """A copy of the model directory ``source`` whose config.json has ``config`` set."""
    shutil.copytree(source, target)
    path = target / "config.json"
    data = json.loads(path.read_text())
    data.update(config)
    path.write_text(json.dumps(data))
    return target


def rewrite_weights(directory: Path, edit: Any) -> None:
    """Rewrite model.safetensors with ``edit(tensors)`` applied to its name -> tensor dict."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


class Allocated(BaseException):
    """Raised by a from_pretrained spy: the load reached the allocation of the weights."""


@pytest.fixture
def no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call to from_pretrained of a model fails the test (outside every ``except
    Exception``): the refusal must come before the model is built."""
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Allocated("from_pretrained was reached")

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM):
        monkeypatch.setattr(auto, "from_pretrained", refuse)


# --------------------------------------------------------------------------- config vs weights


@pytest.mark.parametrize("declared", [1, 3])
def test_a_config_with_another_layer_count_than_its_weights_is_refused(
    gpt2_dir: Path, tmp_path: Path, declared: int
) -> None:
    """Fewer layers dropped the extra blocks silently; more initialised the missing ones at
    random (a different model, and fingerprint, on every load)."""
    target = edited_copy(gpt2_dir, tmp_path / "m", n_layer=declared)
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert f"declares n_layer = {declared} but the weights hold 2 blocks" in message
    assert "transformer.h" in message and "the weights say n_layer = 2" in message


def test_a_llama_config_with_more_layers_than_its_weights_is_refused(
    llama_dir: Path, tmp_path: Path
) -> None:
    target = edited_copy(llama_dir, tmp_path / "m", num_hidden_layers=4)
    with pytest.raises(ModelLoadError, match=r"num_hidden_layers = 4 but the weights hold 2 "
                                             r"blocks of model\.layers"):
        load_model(target, device="cpu")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("n_layer", -1, "sets n_layer = -1 (layers), but it must be at least 1"),
        ("n_head", 0, "sets n_head = 0 (attention heads), but it must be at least 1"),
        ("n_head", -4, "sets n_head = -4 (attention heads), but it must be at least 1"),
        ("n_layer", 10**9, "sets n_layer = 1,000,000,000 (layers), above the limit of 1,024"),
        ("n_embd", 10**9, "sets n_embd = 1,000,000,000 (model width), above the limit"),
        ("n_positions", 10**12, "sets n_positions = 1,000,000,000,000 (context length)"),
        ("n_head", 3, "sets n_embd = 32 and n_head = 3: the width must be a whole number"),
    ],
)
def test_impossible_sizes_are_refused_by_key_and_value_before_allocating(
    gpt2_dir: Path, tmp_path: Path, no_allocation: None, key: str, value: int, expected: str
) -> None:
    target = edited_copy(gpt2_dir, tmp_path / "m", **{key: value})
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert expected in message
    assert f"config.json in {str(target)!r}" in message
    assert "ZeroDivisionError" not in message


def test_a_float_layer_count_is_refused_naming_the_key(gpt2_dir: Path, tmp_path: Path,
                                                       no_allocation: None) -> None:
    target = edited_copy(gpt2_dir, tmp_path / "m", n_layer=1e9)
    with pytest.raises(ModelLoadError, match=r"n_layer.*expected int, got float"):
        load_model(target, device="cpu")


@pytest.mark.parametrize(
    ("key", "value", "tensor"),
    [
        ("n_embd", 64, "transformer.h.0.attn.c_attn.bias is [96] in the weights, [192] by the "
                       "config"),
        ("vocab_size", 500, "transformer.wte.weight is [123, 32] in the weights, [500, 32] by "
                            "the config"),
        ("n_positions", 128, "transformer.wpe.weight is [64, 32] in the weights, [128, 32] by "
                             "the config"),
    ],
)
def test_a_config_whose_sizes_do_not_fit_the_weight_shapes_is_refused_before_allocating(
    gpt2_dir: Path, tmp_path: Path, no_allocation: None, key: str, value: int, tensor: str
) -> None:
    target = edited_copy(gpt2_dir, tmp_path / "m", **{key: value})
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert "does not describe the weights beside it" in message and tensor in message


def test_a_checkpoint_missing_a_weight_is_refused_instead_of_initialised_at_random(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    target = edited_copy(gpt2_dir, tmp_path / "m")
    rewrite_weights(target, lambda t: t.pop("transformer.ln_f.weight"))
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert "1 weights of the model are not in the checkpoint" in message
    assert "initialised at random (transformer.ln_f.weight)" in message


def test_a_stray_weight_inside_the_model_is_refused(gpt2_dir: Path, tmp_path: Path) -> None:
    target = edited_copy(gpt2_dir, tmp_path / "m")
    rewrite_weights(target, lambda t: t.update({"transformer.ln_f.scale": torch.ones(32)}))
    with pytest.raises(ModelLoadError) as info:
        load_model(target, device="cpu")
    message = str(info.value)
    assert "1 weights of the checkpoint have no place in the model" in message
    assert "transformer.ln_f.scale" in message


def test_tied_heads_and_another_tasks_head_still_load(tmp_path: Path) -> None:
    """A tied Llama head is not in the file (legitimately); a BERT checkpoint that also holds
    the next-sentence classifier (as bert-base's does) has weights BertForMaskedLM never
    reads, which are not a disagreement."""
    llama = load_model(save_tiny_llama(tmp_path / "llama"), device="cpu")
    assert llama.n_layers == 2
    bert_dir = save_masked("bert", tmp_path / "bert")
    rewrite_weights(bert_dir, lambda t: t.update({
        "cls.seq_relationship.weight": torch.zeros(2, 32),
        "cls.seq_relationship.bias": torch.zeros(2),
    }))
    bert = load_model(bert_dir, device="cpu")
    assert (bert.architecture, bert.n_layers) == ("BertForMaskedLM", 2)


def test_an_untied_gpt2_without_its_head_is_refused(tmp_path: Path) -> None:
    directory = save_tiny_gpt2(tmp_path / "untied", tie_word_embeddings=False)
    rewrite_weights(directory, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ModelLoadError, match=r"initialised at random \(lm_head\.weight\)"):
        load_model(directory, device="cpu")


def test_every_load_still_passes_trust_remote_code_false_to_the_skeleton(
    gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    seen: list[Any] = []
    original = transformers.AutoModelForCausalLM.from_config

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("trust_remote_code", "missing"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", spy)
    load_model(gpt2_dir, device="cpu")
    assert seen and all(value is False for value in seen)


# --------------------------------------------------------------------------- GGUF


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b'{"not": "gguf"}' + b"\0" * 64)
    with pytest.raises(ModelLoadError) as info:
        load_model(fake, device="cpu")
    message = str(info.value)
    assert f"{str(fake)!r} is not a GGUF file" in message and "b'{\"no'" in message
    assert "JSON" not in message


def test_a_corrupted_gguf_is_named_with_the_readers_reason(tmp_path: Path) -> None:
    """A GGUF header whose metadata is cut short: the reader's error (an array or a JSON
    complaint of its own) comes with the file's name and what it means."""
    import struct

    broken = tmp_path / "broken.gguf"
    # magic, version 3, 5 tensors, 3 key/value pairs, then a key length far past the end
    broken.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 3) + struct.pack("<Q", 10**6) + b"ab")
    with pytest.raises(ModelLoadError) as info:
        load_model(broken, device="cpu")
    message = str(info.value)
    assert f"GGUF file {str(broken)!r} is corrupted or in a form transformers cannot read" in (
        message)
    assert "Download the file again" in message
    assert "download or save the model again" not in message  # not the generic weights error


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("exported", ["1000000", str(MAX_THREADS + 1)])
def test_an_absurd_omp_num_threads_is_refused_by_name(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, exported: str
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", exported)
    with pytest.raises(pytest.UsageError) as info:
        thread_count(request.config)
    message = str(info.value)
    assert f"OMP_NUM_THREADS={int(exported):,}" in message
    assert f"the {MAX_THREADS:,} pytest-circuits allows" in message
    assert "--circuits-threads=N" in message


def test_a_malformed_omp_num_threads_is_set_aside_with_a_warning(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Warning] = []
    monkeypatch.setattr(request.config, "issue_config_time_warning",
                        lambda warning, stacklevel: seen.append(warning))
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    threads, origin = thread_count(request.config)
    assert origin.endswith("workers") and threads >= 1
    (warning,) = seen
    assert isinstance(warning, pytest.PytestConfigWarning)
    assert "OMP_NUM_THREADS='4,2' is not a whole number >= 1" in str(warning)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    with pytest.warns(pytest.PytestConfigWarning, match="OMP_NUM_THREADS='0'"):
        assert exported_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", str(MAX_THREADS))
    assert thread_count(request.config) == (MAX_THREADS, "OMP_NUM_THREADS")


# --------------------------------------------------------------------------- parity


def test_the_analysis_memo_is_an_attribute_of_the_model_and_copies_start_empty(
    gpt2: CircuitModel,
) -> None:
    assert "analysis_memo" in {f.name for f in dataclasses.fields(CircuitModel)}
    assert engine.model_cache(gpt2) is gpt2.analysis_memo
    assert "_analysis_cache" not in gpt2.__dict__
    clone = copy.copy(gpt2)
    assert clone.analysis_memo == {} and clone.analysis_memo is not gpt2.analysis_memo
    assert clone.bridge is gpt2.bridge


def fresh_gpt2(directory: Path) -> CircuitModel:
    """A model no other test has checked or edited (the verdicts live on the model)."""
    return load_model(directory, device="cpu", name="fresh")


def rows_with(model: CircuitModel, task: Task, word: str) -> list[int]:
    token = model.tokenizer.convert_tokens_to_ids(word)
    return [i for i, p in enumerate(task.prompts) if token in model.tokenizer(p)["input_ids"]]


def fault_on_rows_with(model: CircuitModel, word: str, value: float) -> None:
    """Add ``value`` to every bridge logit of the prompts that contain ``word`` (the plain
    comparison model has its own modules and stays exact)."""
    token = model.tokenizer.convert_tokens_to_ids(word)
    seen: dict[str, torch.Tensor] = {}

    def note(module: Any, args: Any, output: Any) -> None:
        seen["rows"] = (args[0] == token).any(-1)

    def fault(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[seen["rows"]] += value
        return output

    model.hf_model.transformer.wte.register_forward_hook(note)
    model.hf_model.lm_head.register_forward_hook(fault)


def test_parity_is_checked_per_task_not_once_per_model(gpt2_dir: Path) -> None:
    """A bridge that is off only on IOI prompts ("gave" is in no numerals prompt) passes the
    numerals preflight, and must still fail IOI's, however many numerals gates ran first."""
    model = fresh_gpt2(gpt2_dir)
    numerals = builtin_task("numerals", n_prompts=16, seed=0)
    ioi = builtin_task("ioi", n_prompts=16, seed=0)
    assert rows_with(model, numerals, "gave") == []
    fault_on_rows_with(model, "gave", 0.5)
    first = parity.ensure_bridge_parity(model, numerals)
    assert first.passed and parity.ensure_bridge_parity(model, numerals) is first
    with pytest.raises(parity.BridgeParityError) as info:
        parity.ensure_bridge_parity(model, ioi)
    assert info.value.result.task == "ioi"
    assert info.value.result.max_abs_diff == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(parity.BridgeParityError):  # remembered for that task
        parity.ensure_bridge_parity(model, ioi)
    assert parity.ensure_bridge_parity(model, numerals) is first


def test_nan_logits_on_the_bridge_are_named_with_their_prompts(gpt2_dir: Path) -> None:
    model = fresh_gpt2(gpt2_dir)
    task = builtin_task("ioi", n_prompts=16, seed=0)
    word = "Ryan"
    rows = rows_with(model, task, word)
    assert 0 < len(rows) < 16
    fault_on_rows_with(model, word, float("nan"))
    result = parity.bridge_parity(model, task)
    assert not result.passed
    assert result.bridge_nonfinite == tuple(rows) and result.plain_nonfinite == ()
    message = result.message()
    listed = ", ".join(map(str, rows[:5]))
    assert "non-finite logits (NaN or infinite) on task 'ioi'" in message
    assert f"the bridge's on {len(rows)} of 16 prompts (index {listed}" in message
    assert "plain Hugging Face model's on" not in message
    assert "largest difference" not in message
    with pytest.raises(parity.BridgeParityError) as info:
        parity.ensure_bridge_parity(model, task)
    assert "pytest_circuits/architectures/" in str(info.value)  # the bridge is at fault


def test_nan_logits_of_the_model_itself_are_named_on_both_sides(tmp_path: Path) -> None:
    """An infinite embedding row (an edit after loading) makes the plain model's logits NaN
    too on the prompts that use that token: the message says the model, not the bridge."""
    directory = save_tiny_gpt2(tmp_path / "untied", tie_word_embeddings=False)
    model = load_model(directory, device="cpu")
    task = builtin_task("ioi", n_prompts=16, seed=0)
    word = "Ryan"
    rows = rows_with(model, task, word)
    assert 0 < len(rows) < 16
    token = model.tokenizer.convert_tokens_to_ids(word)
    with torch.no_grad():
        model.hf_model.transformer.wte.weight[token] = float("inf")
    result = parity.bridge_parity(model, task)
    assert result.bridge_nonfinite == tuple(rows) == result.plain_nonfinite
    assert result.nonfinite_prompt == task.prompts[rows[0]]
    with pytest.raises(parity.BridgeParityError) as info:
        parity.ensure_bridge_parity(model, task)
    message = str(info.value)
    assert f"the plain Hugging Face model's on {len(rows)} of 16 prompts" in message
    assert "the model (not the bridge) is broken on these prompts" in message
    assert "largest difference" not in message
