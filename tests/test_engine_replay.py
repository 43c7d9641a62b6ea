"""Replays that start after the ablated part, against the naive loop (one full hooked forward per
ablation) on random GPT-2, grouped-query Llama, BERT and DistilBERT models deeper than the shared
fixtures (so a replay has blocks between the ablated layer and the last one) and on the zoo.

``engine.replay_rows`` resumes a head's layer at its output projection and an MLP's at the
residual add after it, runs the blocks above, and takes the last block past its attention on the
prediction rows only; ``engine.head_logit_differences`` unembeds those rows for the answer tokens
only. Nothing of this may change a number: every ablated logit difference must be the naive
loop's within 1e-6 relative. (On the CPU build measured it is bit-identical; the tests do not
require that, since BLAS kernels may differ between machines.) The work tests count what runs
(module calls, the rows they see, matmul FLOPs), not seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    WORDS,
    preferred_masked_task,
    preferred_task,
    save_masked,
    save_word_tokenizer,
)

from pytest_circuits.analysis import engine
from pytest_circuits.architectures.base import resolve_module
from pytest_circuits.components import Component
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.tasks import Task, builtin_task

REL = 1e-6
N_LAYERS = 3
N_HEADS = 4
D_MODEL = 32
ABLATIONS = ("zero", "mean", "resample")
RANDOM = ("gpt2", "llama-gqa", "bert", "distilbert")
ZOO = (("tiny-teacher", "numerals"), ("tiny-student-brittle", "ioi"))


# --------------------------------------------------------------------------- models and tasks


def build_random(family: str, directory: Path) -> Any:
    """A random 3-layer, 4-head, d_model 32 model of ``family`` saved with its tokenizer, and the
    same model as a plain Hugging Face model (to pick answers it prefers)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    if family in ("bert", "distilbert"):
        from transformers import AutoModelForMaskedLM

        save_masked(family, directory, seed=1, n_layers=N_LAYERS, d_model=D_MODEL)
        return AutoModelForMaskedLM.from_pretrained(directory).eval()
    torch.manual_seed(1)
    model: Any

    if family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(WORDS),
                n_positions=64,
                n_embd=D_MODEL,
                n_layer=N_LAYERS,
                n_head=N_HEADS,
                initializer_range=0.2,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(WORDS),
                hidden_size=D_MODEL,
                intermediate_size=48,
                num_hidden_layers=N_LAYERS,
                num_attention_heads=N_HEADS,
                num_key_value_heads=2,  # grouped-query attention
                max_position_embeddings=64,
                initializer_range=0.2,
            )
        )
    save_word_tokenizer(directory)
    model.eval()
    model.save_pretrained(directory)
    return model


@dataclass
class Case:
    name: str
    model: CircuitModel
    task: Task


def load_case(name: str, tmp: Path) -> Case:
    if name.startswith("zoo:"):
        model_name, task_name = name[4:].split("/")
        model = load_model(f"zoo:{model_name}", device="cpu")
        return Case(name, model, builtin_task(task_name, n_prompts=8))
    hf = build_random(name, tmp)
    model = load_model(tmp, device="cpu")
    if model.is_masked:
        task = preferred_masked_task(hf, model.tokenizer, name=f"replay-{name}")
    else:
        task = preferred_task(hf, model.tokenizer, name=f"replay-{name}")
    return Case(name, model, task)


CASES = [*RANDOM, *(f"zoo:{model}/{task}" for model, task in ZOO)]


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return load_case(request.param, tmp_path_factory.mktemp("replay"))


@pytest.fixture(scope="module")
def gpt2_deep(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return load_case("gpt2", tmp_path_factory.mktemp("replay-gpt2"))


def every_component(model: CircuitModel) -> list[Component]:
    """Every head and MLP in residual-stream order."""
    return [
        comp
        for layer in range(model.n_layers)
        for comp in [
            *(Component.head_at(layer, head) for head in range(model.n_heads)),
            Component.parse(f"MLP{layer}"),
        ]
    ]


# --------------------------------------------------------------------------- the two paths


def naive(case: Case, hooks: Sequence[tuple[str, Any]], reps: int = 1) -> torch.Tensor:
    """Logit differences of one full bridge forward over the (stacked) prompts with ``hooks``:
    no replay, no capture, no row selection before the whole logits exist."""
    tensors = engine.task_tensors(case.model, case.task)
    tokens = tensors.tokens.repeat(reps, 1)
    with torch.no_grad(), case.model.bridge.hooks(fwd_hooks=list(hooks)):
        logits = case.model.bridge(tokens)
    positions = tensors.positions.repeat(reps)
    rows = logits[torch.arange(tokens.shape[0]), positions]
    return engine.logit_differences(rows, tensors.correct, tensors.distractor)


def fast(case: Case, layer: int, hooks: Sequence[tuple[str, Any]], reps: int = 1) -> torch.Tensor:
    tensors = engine.task_tensors(case.model, case.task)
    run = engine.clean_run(case.model, case.task)
    with torch.no_grad():
        return engine.replay_logit_differences(
            case.model, run.capture, layer, tensors, hooks, reps=reps
        )


def ablation(
    case: Case, comps: Sequence[Component], kind: str, seed: int = 0
) -> list[tuple[str, Any]]:
    values = [engine.replacement(case.model, case.task, c, kind, seed=seed) for c in comps]
    batch = engine.task_tensors(case.model, case.task).n_prompts
    return engine.ablation_hooks(comps, values, batch, case.model)


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.abs().clamp_min(1e-3)
    worst = float(((got - want).abs() / scale).max())
    assert worst <= REL, f"{what}: relative difference {worst:.2e} > {REL:g}"


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", ABLATIONS)
def test_every_single_ablation_replays_like_a_full_forward(case: Case, kind: str) -> None:
    """Every head and MLP, one per replay: the replay starting after the ablated part gives the
    logit difference of each prompt that a full hooked forward gives."""
    moved = 0
    clean = engine.clean_run(case.model, case.task).logit_diff
    for comp in every_component(case.model):
        hooks = ablation(case, [comp], kind, seed=3)
        want = naive(case, hooks)
        assert_same(fast(case, comp.layer, hooks), want, f"{case.name} {comp.name} {kind}")
        moved += bool((want - clean).abs().max() > 1e-4)
    # the ablations did something (the brittle zoo student's pruned heads do not), so agreement
    # is not that of unchanged clean runs
    assert moved >= case.model.n_layers + 1


@pytest.mark.parametrize("n_prompts", [1, 3])
def test_a_few_prompts_replay_like_a_full_forward(gpt2_deep: Case, n_prompts: int) -> None:
    """One and three prompts: the rows of the last block and the head are padded (BLAS kernels
    for one to three rows sum in another order), and the padding never reaches the result."""
    full = gpt2_deep.task
    task = dataclasses.replace(
        full,
        name=f"{full.name}-{n_prompts}",
        prompts=full.prompts[:n_prompts],
        correct=full.correct[:n_prompts],
        distractors=full.distractors[:n_prompts],
    )
    case = Case(f"gpt2 x{n_prompts}", gpt2_deep.model, task)
    for comp in every_component(case.model):
        hooks = ablation(case, [comp], "mean")
        got = fast(case, comp.layer, hooks)
        assert got.shape == (n_prompts,)
        assert_same(got, naive(case, hooks), f"{comp.name} x{n_prompts}")
    stacked = [Component.head_at(2, 0), Component.parse("MLP2")]
    got = fast(case, 2, ablation(case, stacked, "mean"), reps=2)
    for j, comp in enumerate(stacked):
        want = naive(case, ablation(case, [comp], "mean"))
        assert_same(got[j * n_prompts : (j + 1) * n_prompts], want, f"stacked {comp.name}")


def test_stacked_mixed_ablations_replay_like_one_per_forward(case: Case) -> None:
    """A stack of a layer's first head, its MLP and its last head (each ablation in its own copy
    of the batch, as ``ablations_per_forward`` > 1 runs them): copy j is the full forward with
    ablation j. In the last layer the MLP hook then sees an edited replay's MLP output at every
    position, the one case the replay does not cut to the prediction rows."""
    tensors = engine.task_tensors(case.model, case.task)
    for layer in range(case.model.n_layers):
        comps = [
            Component.head_at(layer, 0),
            Component.parse(f"MLP{layer}"),
            Component.head_at(layer, case.model.n_heads - 1),
        ]
        got = fast(case, layer, ablation(case, comps, "mean"), reps=len(comps))
        for j, comp in enumerate(comps):
            want = naive(case, ablation(case, [comp], "mean"))
            copy = got[j * tensors.n_prompts : (j + 1) * tensors.n_prompts]
            assert_same(copy, want, f"{case.name} stacked {comp.name}")


def test_stacked_heads_only_and_mlp_only_replay_like_full_forwards(gpt2_deep: Case) -> None:
    """Stacks without a mixed copy: two heads (z hooks only) and the MLP twice under different
    resample seeds (MLP hooks only), in every layer including the last."""
    case = gpt2_deep
    for layer in range(case.model.n_layers):
        heads = [Component.head_at(layer, 1), Component.head_at(layer, 2)]
        hooks = ablation(case, heads, "zero")
        assert_same(fast(case, layer, hooks, reps=2), naive(case, hooks, reps=2), "heads")
        mlp = Component.parse(f"MLP{layer}")
        values = [
            engine.replacement(case.model, case.task, mlp, "resample", seed=s) for s in (1, 2)
        ]
        batch = engine.task_tensors(case.model, case.task).n_prompts
        hooks = engine.ablation_hooks([mlp, mlp], values, batch, case.model)
        assert_same(fast(case, layer, hooks, reps=2), naive(case, hooks, reps=2), "mlps")


def test_hooks_the_layout_does_not_cover_replay_whole_blocks(
    gpt2_deep: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pattern hook on the start layer, or a z hook on a layer above it, cannot start after
    an ablated part: the replay runs whole blocks (``engine.replay``) and is still exact."""
    case = gpt2_deep
    calls: list[int] = []
    whole = engine.replay

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        return whole(*args, **kwargs)

    monkeypatch.setattr(engine, "replay", spy)

    def halve_head_0(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = act.clone()
        out[:, 0] = out[:, 0] * 0.5
        return out

    pattern = [(engine.pattern_hook(0, case.model), halve_head_0)]
    assert_same(fast(case, 0, pattern), naive(case, pattern), "pattern hook")
    above = ablation(case, [Component.head_at(2, 1)], "zero")
    assert_same(fast(case, 1, above), naive(case, above), "z hook above the start layer")
    assert calls == [0, 1]
    calls.clear()
    fast(case, 1, ablation(case, [Component.head_at(1, 1)], "zero"))
    assert calls == []  # the covered case never runs whole blocks


def test_a_family_without_a_layout_replays_whole_blocks(tmp_path: Path) -> None:
    """``Architecture.layout=None`` (a family that does not declare its block layout) keeps the
    whole-block replay, with the same numbers."""
    case = load_case("llama-gqa", tmp_path)
    bare = load_model(tmp_path, device="cpu")
    bare.family_entry = dataclasses.replace(bare.family_entry, layout=None)
    assert engine.replay_cache_names(bare) == []
    plain = Case("llama-gqa without layout", bare, case.task)
    for comp in [Component.head_at(0, 1), Component.parse("MLP1"), Component.head_at(2, 3)]:
        want = naive(case, ablation(case, [comp], "mean"))
        assert_same(fast(plain, comp.layer, ablation(plain, [comp], "mean")), want, comp.name)


# --------------------------------------------------------------------------- what the replay reads


def layout_module(model: CircuitModel, layer: int, path: str) -> Any:
    block = model.bridge.blocks[layer]
    return resolve_module(block.original_component, path, model.family_entry.family)


@contextmanager
def recording(module: Any, *, inputs: bool) -> Iterator[list[torch.Tensor]]:
    """Every tensor ``module`` is called with (``inputs``) or returns, while the block runs."""
    seen: list[torch.Tensor] = []
    if inputs:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(engine._first(out)))
    try:
        yield seen
    finally:
        handle.remove()


def test_clean_mid_is_the_forwards_residual_after_attention(case: Case) -> None:
    """The residual after each layer's attention, rebuilt from the cached z, is bit for bit the
    tensor the clean forward passed on: the MLP norm's input (pre-norm) or the attention norm's
    output (post-norm)."""
    layout = case.model.family_entry.layout
    assert layout is not None
    tokens = engine.task_tensors(case.model, case.task).tokens
    capture = engine.clean_run(case.model, case.task).capture
    for layer in range(case.model.n_layers):
        if layout.post_norm:
            module, inputs = layout_module(case.model, layer, layout.attn_norm or ""), False
        else:
            module, inputs = layout_module(case.model, layer, layout.mlp_norm or ""), True
        with recording(module, inputs=inputs) as seen, torch.no_grad():
            case.model.bridge(tokens)
        assert torch.equal(engine.clean_mid(case.model, capture, layer), seen[0]), layer


def test_the_clean_run_caches_what_replays_start_from(case: Case) -> None:
    capture = engine.clean_run(case.model, case.task).capture
    for layer in range(case.model.n_layers):
        assert engine.z_hook(layer, case.model) in capture.cache
        assert engine.mlp_out_hook(layer, case.model) in capture.cache


# --------------------------------------------------------------------------- what the replay runs


@contextmanager
def counting(modules: dict[str, Any]) -> Iterator[dict[str, list[tuple[int, ...]]]]:
    """The input shape of every call of each named module that ran to its end (the replay
    stops the last block at its output projection: that attempt is not work done)."""
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(
            lambda m, args, out, name=name: shapes[name].append(tuple(args[0].shape))
        )
        for name, module in modules.items()
    ]
    try:
        yield shapes
    finally:
        for handle in handles:
            handle.remove()


def test_a_head_replay_skips_its_attention_and_cuts_the_last_block_to_the_rows(
    gpt2_deep: Case,
) -> None:
    """A head in layer 0 of a 3-layer GPT-2: layer 0's attention never runs (its output
    projection does, once, at every position); layer 1 runs whole; layer 2's keys and values run
    at every position, but its queries, output projection and MLP only on one row per prompt."""
    case = gpt2_deep
    model = case.model
    tensors = engine.task_tensors(model, case.task)
    n, seq = tensors.tokens.shape
    blocks = model.bridge.blocks
    modules = (
        {f"k{i}": blocks[i].attn.k for i in range(N_LAYERS)}
        | {f"q{i}": blocks[i].attn.q for i in range(N_LAYERS)}
        | {f"o{i}": layout_module(model, i, "attn.c_proj") for i in range(N_LAYERS)}
        | {f"mlp{i}": layout_module(model, i, "mlp") for i in range(N_LAYERS)}
    )
    engine.clean_run(model, case.task)
    hooks = ablation(case, [Component.head_at(0, 2)], "zero")
    with counting(modules) as shapes:
        fast(case, 0, hooks)
    assert shapes["k0"] == []  # no key projection: layer 0's attention does not run
    assert shapes["o0"] == [(n, seq, D_MODEL)] and shapes["mlp0"] == [(n, seq, D_MODEL)]
    assert shapes["k1"] == [(n, seq, D_MODEL)] and shapes["mlp1"] == [(n, seq, D_MODEL)]
    assert shapes["k2"] == [(n, seq, D_MODEL)]
    rows = max(n, engine.MIN_ROWS)  # padded so the BLAS keeps its many-row kernel
    # the last block's queries only on the rows (no other position's output is read)
    assert shapes["q1"] == [(n, seq, D_MODEL)] and shapes["q2"] == [(rows, 1, D_MODEL)]
    assert shapes["o2"] == [(rows, 1, D_MODEL)] and shapes["mlp2"] == [(rows, 1, D_MODEL)]


def test_an_mlp_replay_starts_at_the_next_block(gpt2_deep: Case) -> None:
    """MLP0's ablation runs nothing of layer 0 (the clean residual after attention and the clean
    MLP output are reused), and MLP2's (the last layer) only the head on the rows."""
    case = gpt2_deep
    model = case.model
    blocks = model.bridge.blocks
    modules = {f"block{i}": blocks[i] for i in range(N_LAYERS)} | {
        f"mlp{i}": layout_module(model, i, "mlp") for i in range(N_LAYERS)
    }
    engine.clean_mid(model, engine.clean_run(model, case.task).capture, 0)
    hooks = ablation(case, [Component.parse("MLP0")], "mean")  # runs the reference prompts
    with counting(modules) as shapes:
        fast(case, 0, hooks)
    assert shapes["block0"] == [] and shapes["mlp0"] == []
    # block 1 runs whole; block 2 is stopped at its output projection, then its MLP sees rows
    n = engine.task_tensors(model, case.task).n_prompts
    assert len(shapes["block1"]) == 1 and shapes["block2"] == []
    assert shapes["mlp1"] != [] and shapes["mlp2"] == [(max(n, engine.MIN_ROWS), 1, D_MODEL)]
    hooks = ablation(case, [Component.parse("MLP2")], "mean")
    with counting(modules) as shapes:
        fast(case, 2, hooks)
    assert all(calls == [] for calls in shapes.values())


def matmul_flops(fn: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def test_counted_work_is_what_the_floor_predicts(gpt2_deep: Case) -> None:
    """Matmul FLOPs of one replay, against the count worked out from the shapes (n prompts of
    s tokens, d_model d, MLP width 4d, vocabulary V): a head in layer 0 costs its output
    projection and MLP at every position, layer 1 whole, layer 2's q, k, v and attention at
    every position and its output projection and MLP on n rows, then the head on n rows for the
    answer tokens only."""
    case = gpt2_deep
    model = case.model
    tensors = engine.task_tensors(model, case.task)
    n, s = tensors.tokens.shape
    d, vocab = D_MODEL, model.hf_model.config.vocab_size
    t = n * s
    attention = 2 * 2 * n * s * s * d  # scores and the weighted values, all heads
    qkv, out, mlp = 2 * t * 3 * d * d, 2 * t * d * d, 2 * t * 8 * d * d
    # the head's unembedding only for the answer tokens, padded to MIN_HEAD_COLUMNS columns
    answers = set(tensors.correct.tolist()) | set(tensors.distractor.tolist())
    columns = len(answers | set(range(min(vocab, engine.MIN_HEAD_COLUMNS))))
    assert columns < vocab
    # output projection, MLP and head on the rows, padded to MIN_ROWS (see engine._pad_rows)
    r = max(n, engine.MIN_ROWS)
    rows = 2 * r * 9 * d * d + 2 * r * d * columns
    # the last block: keys and values at every position, queries on the rows only
    last = 2 * t * 2 * d * d + 2 * r * d * d + attention
    engine.clean_run(model, case.task)
    head = ablation(case, [Component.head_at(0, 2)], "zero")
    assert matmul_flops(lambda: fast(case, 0, head)) == (
        (out + mlp) + (qkv + attention + out + mlp) + last + rows
    )
    mlp0 = ablation(case, [Component.parse("MLP0")], "zero")
    assert matmul_flops(lambda: fast(case, 0, mlp0)) == (
        (qkv + attention + out + mlp) + last + rows
    )
    # a full forward: three whole layers and the head at every position
    forward = 3 * (qkv + attention + out + mlp) + 2 * t * d * vocab
    assert matmul_flops(lambda: naive(case, head)) == forward


# --------------------------------------------------------------------------- the prediction head


def test_two_answer_head_is_the_full_head_at_those_tokens(case: Case) -> None:
    """The head on the prediction rows for the correct and distractor tokens only gives the
    logit differences of the full-vocabulary head on the same rows (to float rounding: the same
    dot products summed in another order), stacked copies included."""
    model = case.model
    tensors = engine.task_tensors(model, case.task)
    capture = engine.clean_run(model, case.task).capture
    comps = [Component.head_at(0, 1), Component.parse("MLP0")]
    with torch.no_grad():
        rows = engine.replay_rows(
            model, capture, 0, tensors.positions, ablation(case, comps, "mean"), reps=2
        )
        full = engine.logit_differences(
            engine.head_logits(model, rows), tensors.correct, tensors.distractor
        )
        two = engine.head_logit_differences(model, rows, tensors.correct, tensors.distractor)
    assert two.shape == (2 * tensors.n_prompts,)
    assert_same(two, full, f"{case.name} head")
    assert not torch.equal(full[: tensors.n_prompts], full[tensors.n_prompts :])


def test_the_unembedding_is_found_through_a_bridge_wrapper() -> None:
    """The two-answer head reads the weights of the ``nn.Linear`` a head module is or wraps
    (``original_component``), and falls back to the full head for anything else."""
    linear = torch.nn.Linear(4, 6)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.original_component = linear

    assert engine._plain_linear(linear) is linear
    assert engine._plain_linear(Wrapper()) is linear
    assert engine._plain_linear(torch.nn.GELU()) is None
