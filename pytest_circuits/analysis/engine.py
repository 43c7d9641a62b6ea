"""The forward passes every analysis shares: one captured clean run, then cheap replays.

A clean run records, for every block, the residual stream entering it and the exact arguments
the Hugging Face model passed to it (attention mask, position ids, rotary tables). Ablating a
component in layer ``l`` then only replays blocks ``l..L-1`` from the recorded residual: layers
below an ablated component are identical to the clean run, so running them again is waste. Only
the prediction positions are unembedded (GPT-2's unembedding is about a third of a forward on
short prompts), through the prediction head the model's family declares in
``pytest_circuits.architectures``. Several ablations of one layer can share a replay by stacking
them along the batch dimension, which pays on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..architectures import BRIDGE_HOOKS, HookNames
from ..components import Component
from ..errors import NonFiniteError
from ..models import CircuitModel
from ..tasks import EncodedTask, Task, encode_task

HookFn = Callable[[torch.Tensor, Any], Any]

ABLATIONS = ("zero", "mean", "resample")


def _hooks(model: CircuitModel | None) -> HookNames:
    # Every family registered today uses the bridge's own names; a family that does not says so
    # in its registry entry, which is why the model, when known, is asked.
    return BRIDGE_HOOKS if model is None else model.arch.hooks


def z_hook(layer: int, model: CircuitModel | None = None) -> str:
    """Hook on layer ``layer``'s per-head z, [batch, pos, head, d_head], in ``model``."""
    return _hooks(model).z_hook(layer)


def mlp_out_hook(layer: int, model: CircuitModel | None = None) -> str:
    """Hook on layer ``layer``'s MLP output, [batch, pos, d_model], in ``model``."""
    return _hooks(model).mlp_out_hook(layer)


def pattern_hook(layer: int, model: CircuitModel | None = None) -> str:
    """Hook on layer ``layer``'s attention pattern, [batch, head, query, key], in ``model``."""
    return _hooks(model).pattern_hook(layer)


def component_hook(component: Component, model: CircuitModel | None = None) -> str:
    """The hook whose activation ablating ``component`` edits (z for a head, MLP output)."""
    if component.kind == "head":
        return z_hook(component.layer, model)
    return mlp_out_hook(component.layer, model)


class _StopAfterBlocks(Exception):
    def __init__(self, output: Any) -> None:
        super().__init__("stop after the last block")
        self.output = output


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class TaskTensors:
    """A task encoded for one model, as tensors on the model's device."""

    encoded: EncodedTask
    tokens: torch.Tensor  # [n, seq]
    positions: torch.Tensor  # [n]
    correct: torch.Tensor  # [n]
    distractor: torch.Tensor  # [n]
    corrupted: torch.Tensor  # [m, seq]

    @property
    def n_prompts(self) -> int:
        return int(self.tokens.shape[0])


def task_tensors(model: CircuitModel, task: Task) -> TaskTensors:
    """Encode and validate ``task`` for ``model`` (cached on the model per task fingerprint)."""
    key = ("task_tensors", task.fingerprint())
    cached = model_cache(model).get(key)
    if cached is not None:
        return cached
    encoded = encode_task(task, model.tokenizer, masked=model.is_masked, max_length=model.n_ctx)
    device = model.device
    result = TaskTensors(
        encoded=encoded,
        tokens=torch.tensor(encoded.tokens, dtype=torch.long, device=device),
        positions=torch.tensor(encoded.positions, dtype=torch.long, device=device),
        correct=torch.tensor(encoded.correct_ids, dtype=torch.long, device=device),
        distractor=torch.tensor(encoded.distractor_ids, dtype=torch.long, device=device),
        corrupted=torch.tensor(encoded.corrupted_tokens, dtype=torch.long, device=device),
    )
    model_cache(model)[key] = result
    return result


def model_cache(model: CircuitModel) -> dict[Any, Any]:
    """Per-model memo of derived tensors (encoded tasks, reference statistics, clean runs)."""
    cache = model.__dict__.get("_analysis_cache")
    if cache is None:
        cache = {}
        model.__dict__["_analysis_cache"] = cache
    return cache


@dataclass
class Capture:
    """What a clean run recorded: per-block inputs and call arguments, and cached hooks."""

    resid_pre: list[torch.Tensor]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    final: torch.Tensor  # residual after the last block [batch, seq, d_model]
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    batch: int = 0


def run_capture(
    model: CircuitModel,
    tokens: torch.Tensor,
    *,
    cache_names: Sequence[str] = (),
    hooks: Sequence[tuple[str, HookFn]] = (),
    track_grad: bool = False,
) -> Capture:
    """Run the model's blocks once, recording what a later replay needs.

    Stops after the last block: the caller unembeds only the positions it needs. With
    ``track_grad`` the residual entering block 0 becomes a leaf that requires grad, so every
    cached activation can ``retain_grad`` (used by the attribution screen).
    """
    bridge = model.bridge
    blocks = list(bridge.blocks)
    n_blocks = len(blocks)
    resid: list[torch.Tensor | None] = [None] * n_blocks
    calls: list[Any] = [None] * n_blocks
    cache: dict[str, torch.Tensor] = {}

    def make_pre(index: int) -> Callable[..., Any]:
        def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                hidden = args[0]
            else:
                hidden = kwargs["hidden_states"]
            replaced = None
            if track_grad and index == 0:
                hidden = hidden.detach().requires_grad_(True)
                replaced = hidden
            resid[index] = hidden
            calls[index] = (tuple(args[1:]) if args else (), dict(kwargs))
            if replaced is not None:
                if args:
                    return (replaced, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": replaced}
            return None

        return pre

    def stop(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        raise _StopAfterBlocks(output)

    def saver(name: str) -> HookFn:
        def save(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if track_grad and act.requires_grad:
                act.retain_grad()
            cache[name] = act
            return act

        return save

    handles = [
        block.register_forward_pre_hook(make_pre(i), with_kwargs=True)
        for i, block in enumerate(blocks)
    ]
    handles.append(blocks[-1].register_forward_hook(stop, with_kwargs=True))
    final: torch.Tensor | None = None
    fwd_hooks = list(hooks) + [(name, saver(name)) for name in cache_names]
    try:
        with torch.set_grad_enabled(track_grad), bridge.hooks(fwd_hooks=fwd_hooks):
            try:
                bridge(tokens, use_cache=False)
            except _StopAfterBlocks as stopped:
                final = _first(stopped.output)
    finally:
        for handle in handles:
            handle.remove()
    if final is None or any(r is None for r in resid):
        raise RuntimeError(
            f"{model.name}: the forward pass did not run through every block; this "
            "architecture's blocks are not called the way pytest-circuits expects"
        )
    return Capture(
        resid_pre=[r for r in resid if r is not None],
        calls=calls,
        final=final,
        cache=cache,
        batch=int(tokens.shape[0]),
    )


def _module_device(module: Any) -> torch.device | None:
    """The device of a module's first parameter (None without parameters, or for a plain
    function such as an activation listed in a prediction head)."""
    parameters = getattr(module, "parameters", None)
    if parameters is None:
        return None
    for param in parameters():
        return param.device
    return None


def _to_device(value: Any, device: torch.device | None) -> Any:
    """``value`` (a tensor, or tuples, lists and dicts of them) on ``device``.

    A model loaded with ``device_map=`` keeps its blocks on several devices; the residual and
    the recorded call arguments (attention masks, rotary tables) of block ``i`` must then be
    on block ``i``'s device. On one device this returns the same objects (no copies).
    """
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _tile(value: Any, batch: int, reps: int) -> Any:
    if reps == 1:
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == batch and batch > 1:
            return value.repeat(reps, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, reps) for v in value)
    if isinstance(value, list):
        return [_tile(v, batch, reps) for v in value]
    if isinstance(value, dict):
        return {k: _tile(v, batch, reps) for k, v in value.items()}
    return value


def replay(
    model: CircuitModel,
    capture: Capture,
    start_layer: int,
    hooks: Sequence[tuple[str, HookFn]] = (),
    reps: int = 1,
) -> torch.Tensor:
    """Run blocks ``start_layer..L-1`` from the captured residual, with ``hooks`` active.

    With ``reps > 1`` the batch is stacked ``reps`` times (copy-major: rows ``j*B..(j+1)*B`` are
    copy ``j``), so ``reps`` different ablations can run in one pass. Returns the final residual.
    """
    bridge = model.bridge
    blocks = list(bridge.blocks)
    batch = capture.batch
    hidden = capture.resid_pre[start_layer].detach()
    if reps > 1:
        hidden = hidden.repeat(reps, 1, 1)
    with bridge.hooks(fwd_hooks=list(hooks)):
        for index in range(start_layer, len(blocks)):
            args, kwargs = capture.calls[index]
            device = _module_device(blocks[index])
            hidden = _to_device(hidden, device)
            args = _to_device(_tile(args, batch, reps), device)
            kwargs = _to_device(_tile(kwargs, batch, reps), device)
            if "hidden_states" in kwargs:
                out = blocks[index](**{**kwargs, "hidden_states": hidden})
            else:
                out = blocks[index](hidden, *args, **kwargs)
            hidden = _first(out)
    return hidden


def prediction_logits(
    model: CircuitModel, final: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Logits at one position per prompt: the family's prediction head on those rows only
    (GPT-2: final LayerNorm and unembedding; BERT and DistilBERT: the whole MLM head, read at
    each prompt's ``[MASK]``, which is what ``positions`` holds for a masked model)."""
    reps = final.shape[0] // positions.shape[0]
    pos = positions.to(final.device)
    pos = pos.repeat(reps) if reps > 1 else pos
    rows = final[torch.arange(final.shape[0], device=final.device), pos]
    # Under device_map the head may sit on another device than the last block.
    head = model.arch.prediction_modules(model.hf_model)
    first = next((d for d in map(_module_device, head) if d is not None), None)
    return model.arch.prediction_logits(model.hf_model, _to_device(rows, first))


def check_finite_logits(logits: torch.Tensor, model_name: str, where: str) -> None:
    """Raise ``NonFiniteError`` when any logit (every vocabulary entry, not only the answers) is
    NaN or infinite.

    ``logits`` is [rows, vocab] at the prediction positions; ``where`` says which run produced
    them ("the clean run of task 'ioi'"). A NaN outside the two answer tokens leaves the logit
    difference finite while top-1 accuracy is garbage, so the whole row is checked.
    """
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    bad_rows = (~finite).reshape(finite.shape[0], -1).any(-1)
    nans = int(torch.isnan(logits).sum())
    infs = int(torch.isinf(logits).sum())
    counts = ", ".join(f"{n} {what}" for n, what in ((nans, "NaN"), (infs, "infinite")) if n)
    first = int(torch.nonzero(bad_rows)[0])
    raise NonFiniteError(
        f"{model_name}: {where} produced non-finite logits ({counts}) at the prediction positions "
        f"({int(bad_rows.sum())} of {finite.shape[0]} prompts, first prompt {first}); no metric "
        "computed from them means anything. Check the weights (load_model checks them), any "
        "hook that edits activations, and float16 overflow in activations (load with "
        "dtype='bfloat16' or 'float32')."
    )


def logit_differences(
    logits: torch.Tensor, correct: torch.Tensor, distractor: torch.Tensor
) -> torch.Tensor:
    """Correct minus distractor logit per prompt ([reps * n] rows -> [reps * n])."""
    reps = logits.shape[0] // correct.shape[0]
    correct, distractor = correct.to(logits.device), distractor.to(logits.device)
    c = correct.repeat(reps) if reps > 1 else correct
    d = distractor.repeat(reps) if reps > 1 else distractor
    rows = torch.arange(logits.shape[0], device=logits.device)
    return (logits[rows, c] - logits[rows, d]).float()


@dataclass
class CleanRun:
    """The clean run of one model on one task, kept for replays."""

    capture: Capture
    logit_diff: torch.Tensor  # [n] float32
    top1_correct: torch.Tensor  # [n] bool

    @property
    def mean_logit_diff(self) -> float:
        return float(self.logit_diff.double().mean())


def clean_run(model: CircuitModel, task: Task, *, cache_names: Sequence[str] = ()) -> CleanRun:
    """Capture the clean run (memoised per model and task; extra hooks are cached on demand)."""
    key = ("clean", task.fingerprint())
    memo = model_cache(model)
    existing: CleanRun | None = memo.get(key)
    if existing is not None and all(n in existing.capture.cache for n in cache_names):
        return existing
    tensors = task_tensors(model, task)
    names = set(cache_names) | (set(existing.capture.cache) if existing else set())
    with torch.inference_mode(False), torch.no_grad():
        capture = run_capture(model, tensors.tokens, cache_names=sorted(names))
        logits = prediction_logits(model, capture.final, tensors.positions)
    check_finite_logits(logits, model.name, f"the clean run of task {task.name!r}")
    diffs = logit_differences(logits, tensors.correct, tensors.distractor)
    run = CleanRun(
        capture=capture,
        logit_diff=diffs,
        top1_correct=logits.argmax(-1) == tensors.correct.to(logits.device),
    )
    memo[key] = run
    return run


@dataclass
class Reference:
    """Activations on the corrupted reference prompts, for mean and resample ablation."""

    z: list[torch.Tensor]  # per layer [m, seq, heads, d_head]
    mlp_out: list[torch.Tensor]  # per layer [m, seq, d_model]

    def mean_z(self, layer: int) -> torch.Tensor:
        return self.z[layer].mean(0)

    def mean_mlp(self, layer: int) -> torch.Tensor:
        return self.mlp_out[layer].mean(0)


def reference(model: CircuitModel, task: Task) -> Reference:
    """Run the corrupted reference set once per model and task (memoised)."""
    key = ("reference", task.fingerprint())
    memo = model_cache(model)
    if key in memo:
        return memo[key]
    tensors = task_tensors(model, task)
    layers = range(model.n_layers)
    names = [z_hook(i, model) for i in layers] + [mlp_out_hook(i, model) for i in layers]
    with torch.no_grad():
        capture = run_capture(model, tensors.corrupted, cache_names=names)
    ref = Reference(
        z=[capture.cache[z_hook(i, model)].detach() for i in layers],
        mlp_out=[capture.cache[mlp_out_hook(i, model)].detach() for i in layers],
    )
    memo[key] = ref
    return ref


def replacement(
    model: CircuitModel,
    task: Task,
    component: Component,
    ablation: str,
    *,
    seed: int = 0,
) -> torch.Tensor | None:
    """The value an ablated component's activation is replaced with (None for zero).

    Heads: a [seq, d_head] (mean) or [n, seq, d_head] (resample) slice for that head's z.
    MLPs: [seq, d_model] or [n, seq, d_model].
    """
    if ablation == "zero":
        return None
    ref = reference(model, task)
    if ablation == "mean":
        if component.kind == "head":
            return ref.mean_z(component.layer)[:, component.order]
        return ref.mean_mlp(component.layer)
    if ablation == "resample":
        n = task_tensors(model, task).n_prompts
        layer = component.layer
        source = ref.z[layer] if component.kind == "head" else ref.mlp_out[layer]
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randint(0, source.shape[0], (n,), generator=generator).to(source.device)
        chosen = source[picks]
        return chosen[:, :, component.order] if component.kind == "head" else chosen
    raise ValueError(f"ablation {ablation!r} is not one of {', '.join(ABLATIONS)}")


def ablation_hooks(
    components: Sequence[Component],
    values: Sequence[torch.Tensor | None],
    batch: int,
    model: CircuitModel | None = None,
) -> list[tuple[str, HookFn]]:
    """Hooks that ablate ``components[j]`` in copy ``j`` of a stacked batch (hook names of
    ``model``'s family; the bridge's shared names when no model is given).

    A head is ablated by editing its own slice ``z[:, :, h]`` (attention-weighted values before
    the output projection) and nothing else; an MLP by replacing its output.
    """
    reps = len(components)
    by_hook: dict[str, list[tuple[int, Component, torch.Tensor | None]]] = {}
    for j, (comp, value) in enumerate(zip(components, values, strict=True)):
        by_hook.setdefault(component_hook(comp, model), []).append((j, comp, value))
    hooks: list[tuple[str, HookFn]] = []
    for name, edits in by_hook.items():

        def edit(act: torch.Tensor, hook: Any, edits: Any = edits) -> torch.Tensor:
            out = act.clone()
            view = out.view(reps, batch, *out.shape[1:])
            for j, comp, value in edits:
                if comp.kind == "head":
                    target = view[j, :, :, comp.order]
                else:
                    target = view[j]
                if value is None:
                    target.zero_()
                else:
                    # the reference may live on another device than this layer (device_map)
                    value = value.to(device=target.device, dtype=target.dtype)
                    target.copy_(value.expand_as(target))
            return out

        hooks.append((name, edit))
    return hooks
