"""Every family of the paper end to end in the engine, against plain Hugging Face models.

Masked models (BERT, DistilBERT through our own adapter): the bridge's logits are the plain
model's, predictions are read through the whole MLM head at each prompt's ``[MASK]`` (which is
not the last token here), ablating a head equals zeroing its columns of the output projection,
and ablating an MLP equals zeroing its output. Grouped-query attention (a tiny Llama with 4 query
heads sharing 2 key/value heads): z and patterns are per query head, and z is the pattern of
that query head applied to the values of the key/value head it shares. Loading in bfloat16 and
with ``device_map`` gives the same analyses. All models are tiny, random and built offline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    D_HEAD,
    N_HEADS,
    N_LAYERS,
    masked_prompt,
    mean_logit_diff,
    output_projection,
    preferred_masked_task,
    save_masked,
)

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import measure_task_performance as task_performance
from pytest_circuits.analysis.ablation import sweep
from pytest_circuits.components import Component
from pytest_circuits.errors import ModelLoadError
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.tasks import Task

TOL = 1e-5
D_MODEL = N_HEADS * D_HEAD
MASKED = ("bert", "distilbert")


# --------------------------------------------------------------------------- masked fixtures


@dataclass
class Masked:
    family: str
    directory: Path
    model: CircuitModel
    hf: Any
    task: Task
    tokens: torch.Tensor
    mask_positions: torch.Tensor
    correct: torch.Tensor
    distractor: torch.Tensor


def plain_masked(directory: Path) -> Any:
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=MASKED)
def masked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Masked:
    family = request.param
    directory = save_masked(family, tmp_path_factory.mktemp(f"tiny-{family}"))
    model = load_model(directory, device="cpu")
    hf = plain_masked(directory)
    task = preferred_masked_task(hf, model.tokenizer, f"tiny-masked-ioi-{family}")
    tok = model.tokenizer
    tokens = torch.tensor([tok(p)["input_ids"] for p in task.prompts])
    return Masked(
        family=family,
        directory=directory,
        model=model,
        hf=hf,
        task=task,
        tokens=tokens,
        mask_positions=(tokens == tok.mask_token_id).nonzero()[:, 1],
        correct=torch.tensor([tok.convert_tokens_to_ids(a.strip()) for a in task.correct]),
        distractor=torch.tensor([tok.convert_tokens_to_ids(a.strip()) for a in task.distractors]),
    )


def hf_masked_metric(hf: Any, case: Masked) -> float:
    with torch.no_grad():
        logits = hf(case.tokens).logits
    return mean_logit_diff(logits, case.mask_positions, case.correct, case.distractor)


def mlp_output_module(hf: Any, family: str, layer: int) -> torch.nn.Module:
    """The module whose output is the MLP's contribution before the residual add and norm."""
    if family == "bert":
        return hf.bert.encoder.layer[layer].output.dense
    return hf.distilbert.transformer.layer[layer].ffn


@contextmanager
def zeroed_output(module: torch.nn.Module) -> Iterator[None]:
    handle = module.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- masked: loading


def test_masked_models_load_as_their_family(masked: Masked) -> None:
    model = masked.model
    assert (model.family, model.kind, model.is_masked) == (masked.family, "masked", True)
    assert (model.n_layers, model.n_heads, model.n_kv_heads, model.d_head) == (2, 4, 4, 8)
    assert model.weights_fingerprint == model.weights_fingerprint  # computed, stable
    if masked.family == "distilbert":  # our adapter read hidden_dim, not 4 * dim
        assert model.bridge.cfg.d_mlp == 48


def test_masked_bridge_logits_equal_the_plain_models(masked: Masked) -> None:
    with torch.no_grad():
        bridged = masked.model.bridge(masked.tokens)
        plain = masked.hf(masked.tokens).logits
    torch.testing.assert_close(bridged, plain, atol=TOL, rtol=0)


def test_masked_positions_are_the_mask_tokens_not_the_last(masked: Masked) -> None:
    tensors = engine.task_tensors(masked.model, masked.task)
    assert torch.equal(tensors.tokens, masked.tokens)
    assert torch.equal(tensors.positions, masked.mask_positions)
    assert (tensors.positions == masked.tokens.shape[1] - 2).all()


def test_masked_prediction_logits_are_the_full_mlm_head_at_the_mask(masked: Masked) -> None:
    capture = engine.run_capture(masked.model, masked.tokens)
    with torch.no_grad():
        got = engine.prediction_logits(masked.model, capture.final, masked.mask_positions)
        plain = masked.hf(masked.tokens).logits
    rows = torch.arange(len(masked.mask_positions))
    torch.testing.assert_close(got, plain[rows, masked.mask_positions], atol=TOL, rtol=0)
    # and not the last position's logits, which a causal rule would read
    assert (got - plain[rows, -1]).abs().max() > 1e-2


def test_masked_task_performance_is_the_plain_models_at_the_mask(masked: Masked) -> None:
    perf = task_performance(masked.model, masked.task)
    assert perf.mean_logit_diff == pytest.approx(hf_masked_metric(masked.hf, masked), abs=TOL)
    assert perf.pairwise_accuracy == 1.0  # the task was built from what the model prefers


def test_masked_hooks_are_per_head_and_attention_is_bidirectional(masked: Masked) -> None:
    names = [engine.z_hook(0), engine.pattern_hook(0), engine.mlp_out_hook(0)]
    cache = engine.run_capture(masked.model, masked.tokens, cache_names=names).cache
    n, seq = masked.tokens.shape
    assert cache[names[0]].shape == (n, seq, N_HEADS, D_HEAD)
    assert cache[names[2]].shape == (n, seq, D_MODEL)
    pattern = cache[names[1]]
    assert pattern.shape == (n, N_HEADS, seq, seq)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(n, N_HEADS, seq), atol=1e-5, rtol=0)
    # the first token attends to later ones: no causal mask in an encoder
    upper = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    assert pattern[..., upper].min() > 0


# --------------------------------------------------------------------------- masked: exactness


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_masked_zero_head_equals_zeroed_output_projection_columns(
    masked: Masked, layer: int
) -> None:
    names = [f"L{layer}H{h}" for h in range(N_HEADS)]
    result = sweep(masked.model, masked.task, ablation="zero", components=names)
    for head in range(N_HEADS):
        edited = copy.deepcopy(masked.hf)
        with torch.no_grad():
            proj = output_projection(edited, masked.family, layer)
            proj.weight[:, head * D_HEAD : (head + 1) * D_HEAD] = 0.0
        got = result.effect(f"L{layer}H{head}").ablated_metric
        assert got == pytest.approx(hf_masked_metric(edited, masked), abs=TOL), f"head {head}"
        assert abs(got - result.clean_metric) > 10 * TOL


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_masked_zero_mlp_equals_zeroed_mlp_output(masked: Masked, layer: int) -> None:
    result = sweep(masked.model, masked.task, ablation="zero", components=[f"MLP{layer}"])
    with zeroed_output(mlp_output_module(masked.hf, masked.family, layer)):
        want = hf_masked_metric(masked.hf, masked)
    assert result.effects[0].ablated_metric == pytest.approx(want, abs=TOL)
    assert abs(want - result.clean_metric) > 10 * TOL


def test_masked_mean_ablation_equals_a_hand_patched_full_forward(masked: Masked) -> None:
    """Every component's activation replaced by its per-position mean over the corrupted
    prompts, patched with a plain bridge hook on a full forward (no engine code)."""
    model = masked.model
    corrupted = torch.tensor([model.tokenizer(p)["input_ids"] for p in masked.task.corrupted])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(corrupted)
    result = sweep(model, masked.task, ablation="mean", ablations_per_forward=1)
    for effect in result.effects:
        comp = Component.parse(effect.name)
        mean = cache[engine.component_hook(comp, model)].mean(0)
        value = mean[:, comp.order] if comp.kind == "head" else mean

        def patch(act: torch.Tensor, hook: Any, comp: Component = comp, value: Any = value) -> Any:
            act = act.clone()
            if comp.kind == "head":
                act[:, :, comp.order] = value
            else:
                act[:] = value
            return act

        hooks = [(engine.component_hook(comp, model), patch)]
        with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
            logits = model.bridge(masked.tokens)
        want = mean_logit_diff(logits, masked.mask_positions, masked.correct, masked.distractor)
        assert effect.ablated_metric == pytest.approx(want, abs=TOL), effect.name


def test_distilbert_adapter_hooks_read_the_modules_they_name(tmp_path: Path) -> None:
    """Our adapter's hook_attn_out is out_lin's output, hook_mlp_out the ffn's, and
    hook_resid_mid the first LayerNorm's output (the residual stream between the sublayers of a
    post-LayerNorm block), each checked against a forward hook on the plain module."""
    directory = save_masked("distilbert", tmp_path / "d")
    model = load_model(directory, device="cpu")
    hf = plain_masked(directory)
    tokens = torch.tensor([model.tokenizer(masked_prompt("Mary", "John", "John"))["input_ids"]])
    seen: dict[str, torch.Tensor] = {}
    layer = hf.distilbert.transformer.layer[1]
    handles = [
        module.register_forward_hook(
            lambda mod, args, out, key=key: seen.__setitem__(key, out[0] if key == "attn" else out)
        )
        for key, module in (
            ("attn", layer.attention), ("mlp", layer.ffn), ("mid", layer.sa_layer_norm)
        )
    ]
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for handle in handles:
            handle.remove()
    names = ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_mid"]
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    for name, key in zip(names, ("attn", "mlp", "mid"), strict=True):
        torch.testing.assert_close(cache[name], seen[key], atol=TOL, rtol=0, msg=name)


def test_a_masked_pair_loads_and_compares_shapes(tmp_path: Path) -> None:
    """BERT teacher, DistilBERT student, one tokenizer: a pair like the paper's."""
    teacher = load_model(save_masked("bert", tmp_path / "t"), device="cpu")
    student = load_model(save_masked("distilbert", tmp_path / "s", seed=1), device="cpu")
    pair = load_pair(teacher, student)
    assert pair.same_tokenizer
    assert (pair.teacher.family, pair.student.family) == ("bert", "distilbert")


# --------------------------------------------------------------------------- GQA (Llama)


def test_gqa_model_has_fewer_key_value_heads_than_query_heads(llama: CircuitModel) -> None:
    assert (llama.n_heads, llama.n_kv_heads) == (4, 2)
    assert llama.hf_model.config.num_key_value_heads == 2


def test_gqa_z_is_each_query_heads_pattern_applied_to_its_shared_values(
    llama: CircuitModel, llama_task: Task
) -> None:
    """z[h] = pattern[h] @ v[h // (n_heads / n_kv)]: one z and one pattern per query head, the
    values shared by the query heads of a group (checked by hand from the bridge's hook_v)."""
    tokens = engine.task_tensors(llama, llama_task).tokens
    names = ["blocks.1.attn.hook_v", engine.pattern_hook(1), engine.z_hook(1)]
    with torch.no_grad():
        _, cache = llama.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    v, pattern, z = (cache[n] for n in names)
    n, seq = tokens.shape
    assert v.shape == (n, seq, 2, D_HEAD)  # two key/value heads
    assert pattern.shape == (n, N_HEADS, seq, seq)  # four query heads
    assert z.shape == (n, seq, N_HEADS, D_HEAD)
    group = N_HEADS // 2
    for head in range(N_HEADS):
        want = pattern[:, head] @ v[:, :, head // group]  # [n, seq, d_head]
        torch.testing.assert_close(z[:, :, head], want, atol=TOL, rtol=0, msg=f"head {head}")
    # heads sharing values still attend differently: patterns are per query head
    assert (pattern[:, 0] - pattern[:, 1]).abs().max() > 1e-3
    # causal: no query attends to a later key
    upper = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    assert pattern[..., upper].abs().max() == 0


def test_gqa_mean_ablation_replaces_one_query_heads_z_only(
    llama: CircuitModel, llama_task: Task
) -> None:
    """The mean-ablation value of a query head is that head's own mean z ([seq, d_head]), not
    its key/value head's, and the signatures the pattern similarity reads hold one pattern per
    query head."""
    from pytest_circuits.analysis.similarity import signatures

    ref = engine.reference(llama, llama_task)
    for head in range(N_HEADS):
        value = engine.replacement(llama, llama_task, Component.head_at(1, head), "mean")
        assert value is not None
        torch.testing.assert_close(value, ref.z[1][:, :, head].mean(0), atol=1e-6, rtol=0)
    sig = signatures(llama, llama_task)
    seq = engine.task_tensors(llama, llama_task).tokens.shape[1]
    assert sig.patterns.shape == (N_LAYERS * N_HEADS, seq, seq)
    assert sig.head_outputs.shape[0] == N_LAYERS * N_HEADS


def test_gqa_zeroing_a_query_head_leaves_its_group_partner(
    llama: CircuitModel, llama_task: Task, llama_hf: Any
) -> None:
    """Zeroing query head 0's o_proj columns is what ablating L0H0 does, and it differs from
    also zeroing head 1 (which shares head 0's keys and values)."""
    tensors = engine.task_tensors(llama, llama_task)
    result = sweep(llama, llama_task, ablation="zero", components=["L0H0", "L0H1"])

    def metric_with_zeroed(heads: list[int]) -> float:
        edited = copy.deepcopy(llama_hf)
        with torch.no_grad():
            o_proj = edited.model.layers[0].self_attn.o_proj
            for head in heads:
                o_proj.weight[:, head * D_HEAD : (head + 1) * D_HEAD] = 0
            logits = edited(tensors.tokens).logits
        return mean_logit_diff(logits, tensors.positions, tensors.correct, tensors.distractor)

    assert result.effect("L0H0").ablated_metric == pytest.approx(metric_with_zeroed([0]), abs=TOL)
    assert result.effect("L0H1").ablated_metric == pytest.approx(metric_with_zeroed([1]), abs=TOL)
    assert abs(metric_with_zeroed([0, 1]) - result.effect("L0H0").ablated_metric) > 10 * TOL


# --------------------------------------------------------------------------- bf16 and device_map


def test_bfloat16_loading_matches_the_plain_model_in_bfloat16(llama_dir: Path) -> None:
    """Weights in bfloat16, rotary tables kept as from_pretrained keeps them, and the bridge's
    logits those of the plain bfloat16 model (the same kernels: equal to bf16 rounding)."""
    from transformers import AutoModelForCausalLM

    model = load_model(llama_dir, device="cpu", dtype="bfloat16")
    plain = AutoModelForCausalLM.from_pretrained(
        llama_dir, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    assert model.dtype == "bfloat16"
    assert {p.dtype for p in model.hf_model.parameters()} == {torch.bfloat16}
    ours = dict(model.hf_model.named_buffers())
    for name, buffer in plain.named_buffers():
        matches = [b for n, b in ours.items() if n.endswith(name.split(".")[-1])]
        assert all(b.dtype == buffer.dtype for b in matches), name
    tokens = torch.tensor([[2, 5, 9, 14, 20, 31, 7]])
    with torch.no_grad():
        torch.testing.assert_close(
            model.bridge(tokens).float(), plain(tokens).logits.float(), atol=2e-2, rtol=0
        )


def test_bfloat16_sweep_matches_weight_edits_within_bfloat16_rounding(
    llama_dir: Path, llama_task: Task
) -> None:
    from transformers import AutoModelForCausalLM

    model = load_model(llama_dir, device="cpu", dtype="bfloat16")
    tensors = engine.task_tensors(model, llama_task)
    result = sweep(model, llama_task, ablation="zero", components=["L1H2"])
    plain = AutoModelForCausalLM.from_pretrained(
        llama_dir, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        plain.model.layers[1].self_attn.o_proj.weight[:, 2 * D_HEAD : 3 * D_HEAD] = 0
        logits = plain(tensors.tokens).logits
    want = mean_logit_diff(logits.float(), tensors.positions, tensors.correct, tensors.distractor)
    assert result.effects[0].ablated_metric == pytest.approx(want, abs=5e-2)
    assert result.fingerprint.dtype == "bfloat16"


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "auto"], ids=["explicit", "auto"])
def test_device_map_loading_gives_the_same_analyses(
    llama: CircuitModel, llama_dir: Path, llama_task: Task, device_map: Any
) -> None:
    """The device_map path (from_pretrained dispatch, engine moving tensors per block) on a
    CPU-only machine: every number equals the single-device model's."""
    spread = load_model(llama_dir, device_map=device_map)
    assert spread.device == "cpu"
    assert spread.weights_fingerprint == llama.weights_fingerprint
    ours = sweep(spread, llama_task, ablation="mean", ablations_per_forward=1)
    reference = sweep(llama, llama_task, ablation="mean", ablations_per_forward=1)
    assert [e.ablated_metric for e in ours.effects] == pytest.approx(
        [e.ablated_metric for e in reference.effects], abs=1e-6
    )
    load_pair(llama, spread)  # one device kind: a valid pair


def test_device_map_with_an_explicit_device_is_refused(llama_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="pass one"):
        load_model(llama_dir, device="cpu", device_map="auto")


def test_device_map_without_accelerate_names_the_extra(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_accelerate(name: str, *args: Any) -> Any:
        return None if name == "accelerate" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_accelerate)
    with pytest.raises(ModelLoadError) as info:
        load_model(llama_dir, device_map="auto")
    assert "pip install 'pytest-circuits[multi-gpu]'" in str(info.value)


def test_tensors_follow_each_block_to_its_device() -> None:
    """The replay's mover reaches tensors nested in the recorded call arguments (here onto the
    meta device, the only second device a CPU machine has) and leaves the rest alone."""
    meta = torch.device("meta")
    args = (torch.ones(2), [torch.zeros(1), 3], {"mask": torch.ones(1, 1), "flag": True})
    moved: Callable[..., Any] = engine._to_device
    out = moved(args, meta)
    assert out[0].device == meta and out[1][0].device == meta and out[1][1] == 3
    assert out[2]["mask"].device == meta and out[2]["flag"] is True
    same = torch.ones(3)
    assert moved(same, torch.device("cpu")) is same  # no copy on the same device


# --------------------------------------------------------------------------- bridge parity


def _causal(request: pytest.FixtureRequest, family: str) -> tuple[CircuitModel, Task]:
    return request.getfixturevalue(family), request.getfixturevalue(f"{family}_task")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bridge_parity_holds_for_causal_families(
    request: pytest.FixtureRequest, family: str
) -> None:
    check_parity(*_causal(request, family))


def test_bridge_parity_holds_for_masked_families(masked: Masked) -> None:
    check_parity(masked.model, masked.task)


def check_parity(model: CircuitModel, task: Task) -> None:
    from pytest_circuits.parity import bridge_parity

    result = bridge_parity(model, task)
    assert result.passed, result.message()
    assert result.max_rel_diff < 1e-5  # measured: 0 to a few 1e-7 in float32
    assert (result.rtol, result.atol) == (1e-4, 1e-5)
    assert result.n_prompts == len(task.prompts)
    assert result.vocab_size == model.hf_model.config.vocab_size
    assert "matches the plain Hugging Face model" in result.message()


def test_the_plain_model_shares_the_loaded_weights(llama: CircuitModel) -> None:
    from pytest_circuits.parity import plain_hf_model

    plain = plain_hf_model(llama)
    assert not any(type(m).__name__.endswith("Bridge") for m in plain.modules())
    loaded = {t.data_ptr() for t in llama._hf_state.values()}  # type: ignore[union-attr]
    assert {p.data_ptr() for p in plain.parameters()} <= loaded  # no copy was made
    assert all(b.device.type == "cpu" for b in plain.buffers())


def test_bridge_parity_names_the_largest_difference(
    gpt2_dir: Path, gpt2_task: Task
) -> None:
    """A fault on the bridge side only (a hook on the bridged unembedding adds 0.5 to token 17
    of prompt 2): parity fails and names that prompt, its position and that token."""
    from pytest_circuits.parity import bridge_parity

    model = load_model(gpt2_dir, device="cpu")

    def fault(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[2, ..., 17] += 0.5
        return output

    handle = model.hf_model.lm_head.register_forward_hook(fault)
    try:
        result = bridge_parity(model, gpt2_task)
    finally:
        handle.remove()
    assert not result.passed
    assert (result.worst_prompt_index, result.worst_token_id) == (2, 17)
    assert result.worst_prompt == gpt2_task.prompts[2]
    assert result.worst_position == engine.task_tensors(model, gpt2_task).positions[2]
    assert result.worst_bridge_logit - result.worst_plain_logit == pytest.approx(0.5, abs=1e-5)
    assert result.max_abs_diff == pytest.approx(0.5, abs=1e-5)
    message = result.message()
    assert "does NOT match" in message and "prompt 2" in message and "(id 17)" in message
    # a looser tolerance than the fault accepts it, and the result round-trips as a dict
    assert bridge_parity(model, gpt2_task, rtol=1.0).passed
    assert result.to_dict()["worst_token_id"] == 17


def test_bridge_parity_catches_a_masked_head_read_as_norm_and_unembedding(
    masked: Masked,
) -> None:
    """The trap of the TransformerLens BERT mapping (ln_final + unembed, no transform dense):
    a family entry written that way fails parity."""
    import dataclasses

    from pytest_circuits.parity import bridge_parity

    head = masked.model.family_entry.prediction_head
    wrong = dataclasses.replace(masked.model.family_entry, prediction_head=head[2:])
    model = copy.copy(masked.model)
    model.family_entry = wrong
    model.__dict__.pop("_analysis_cache", None)
    result = bridge_parity(model, masked.task)
    assert not result.passed
    assert result.max_rel_diff > 1e-2


def test_bridge_parity_in_bfloat16_uses_the_bfloat16_tolerance(
    llama_dir: Path, llama_task: Task
) -> None:
    from pytest_circuits.parity import bridge_parity

    model = load_model(llama_dir, device="cpu", dtype="bfloat16")
    result = bridge_parity(model, llama_task)
    assert (result.dtype, result.rtol) == ("bfloat16", 2e-2)
    assert result.passed, result.message()


def test_bridge_parity_refuses_negative_tolerances(gpt2: CircuitModel, gpt2_task: Task) -> None:
    from pytest_circuits.parity import bridge_parity

    with pytest.raises(ValueError, match="non-negative"):
        bridge_parity(gpt2, gpt2_task, rtol=-1.0)


def test_ensure_bridge_parity_checks_once_per_model_and_keeps_failing(
    gpt2_dir: Path, gpt2_task: Task, llama: CircuitModel, llama_task: Task
) -> None:
    """The gate-side entry: a passing model is checked once (the memo answers later calls);
    a model whose bridge is off fails on the first call and on every later one."""
    from pytest_circuits import parity

    first = parity.ensure_bridge_parity(llama, llama_task)
    assert parity.ensure_bridge_parity(llama, llama_task) is first

    model = load_model(gpt2_dir, device="cpu")
    handle = model.hf_model.lm_head.register_forward_hook(lambda mod, args, out: out + 1e-2)
    try:
        with pytest.raises(parity.BridgeParityError) as info:
            parity.ensure_bridge_parity(model, gpt2_task)
    finally:
        handle.remove()
    assert "does NOT match" in str(info.value) and "pytest_circuits/architectures/" in str(
        info.value
    )
    assert info.value.result.max_abs_diff == pytest.approx(1e-2, rel=1e-3)
    with pytest.raises(parity.BridgeParityError):  # remembered, even with the fault gone
        parity.ensure_bridge_parity(model, gpt2_task)
