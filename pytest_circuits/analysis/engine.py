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

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..architectures import BRIDGE_HOOKS, BlockLayout, HookNames
from ..architectures.base import resolve_module
from ..components import Component
from ..config.options import ABLATIONS
from ..errors import GateConfigError, NonFiniteError
from ..models import CircuitModel
from ..tasks import EncodedTask, Task, encode_task

HookFn = Callable[[torch.Tensor, Any], Any]


#: Every analysis runs at most this many prompts through the model at once: a clean run keeps
#: every block's input residual and call arguments for its replays, so a whole 10,000-prompt task
#: in one batch needed about 9.5 GB on the zoo. Per-prompt results are computed chunk by chunk and
#: averaged at the end, so peak memory depends on this number, not on the task's size. A task of
#: at most this many prompts runs as one batch, exactly as before chunking existed. Overridable
#: with the ``PYTEST_CIRCUITS_PROMPT_BATCH`` environment variable (read at import) or by setting
#: this attribute (read at each call).
def _prompt_batch_from_env() -> int:
    text = os.environ.get("PYTEST_CIRCUITS_PROMPT_BATCH", "256").strip()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise GateConfigError(
            f"PYTEST_CIRCUITS_PROMPT_BATCH={text!r} is not a whole number >= 1; it is how many "
            "prompts run through the model at once (default 256): unset it or set e.g. 64"
        )
    return value


PROMPT_BATCH: int = _prompt_batch_from_env()


def prompt_chunks(n: int, batch: int | None = None) -> list[slice]:
    """The consecutive slices of ``n`` prompts, each at most ``batch`` (default
    :data:`PROMPT_BATCH`) long; one slice covering everything when ``n <= batch``."""
    size = PROMPT_BATCH if batch is None else batch
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GateConfigError(
            f"PROMPT_BATCH must be a whole number >= 1, got {size!r}; it is how many prompts "
            "run through the model at once (default 256)"
        )
    if n <= size:
        return [slice(0, n)]
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _hooks(model: CircuitModel | None) -> HookNames:
    # Every family registered today uses the bridge's own names; a family that does not says so
    # in its registry entry, which is why the model, when known, is asked.
    return BRIDGE_HOOKS if model is None else model.family_entry.hooks


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

    def rows(self, prompts: slice) -> TaskTensors:
        """The prompts in ``prompts`` (views, no copies); the reference set stays whole, since
        mean-ablation values are over all of it whichever prompts they replace."""
        return TaskTensors(
            encoded=self.encoded,
            tokens=self.tokens[prompts],
            positions=self.positions[prompts],
            correct=self.correct[prompts],
            distractor=self.distractor[prompts],
            corrupted=self.corrupted,
        )


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
    """Per-model memo of derived tensors (encoded tasks, reference statistics, clean runs):
    the model's ``CircuitModel.analysis_memo``."""
    return model.analysis_memo


@dataclass
class Capture:
    """What a clean run recorded: per-block inputs and call arguments, and cached hooks."""

    resid_pre: list[torch.Tensor]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    final: torch.Tensor  # residual after the last block [batch, seq, d_model]
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    batch: int = 0
    #: residual after each layer's attention sublayer, recomputed on first use from the cached z
    #: with the model's own modules (see ``clean_mid``)
    mids: dict[int, torch.Tensor] = field(default_factory=dict)


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


def _run_block(
    model: CircuitModel, capture: Capture, index: int, hidden: torch.Tensor, reps: int
) -> Any:
    """Block ``index`` on ``hidden`` with the arguments HF passed to it in the clean run (tiled
    for ``reps`` stacked copies, moved to the block's device). Returns the block's raw output."""
    block = model.bridge.blocks[index]
    args, kwargs = capture.calls[index]
    device = _module_device(block)
    hidden = _to_device(hidden, device)
    args = _to_device(_tile(args, capture.batch, reps), device)
    kwargs = _to_device(_tile(kwargs, capture.batch, reps), device)
    if "hidden_states" in kwargs:
        return block(**{**kwargs, "hidden_states": hidden})
    return block(hidden, *args, **kwargs)


def replay(
    model: CircuitModel,
    capture: Capture,
    start_layer: int,
    hooks: Sequence[tuple[str, HookFn]] = (),
    reps: int = 1,
) -> torch.Tensor:
    """Run blocks ``start_layer..L-1`` from the captured residual, with ``hooks`` active.

    With ``reps > 1`` the batch is stacked ``reps`` times (copy-major: rows ``j*B..(j+1)*B`` are
    copy ``j``), so ``reps`` different ablations can run in one pass. Returns the final residual
    at every position; :func:`replay_rows` is the cheaper replay when only the prediction
    positions are read.
    """
    bridge = model.bridge
    hidden = capture.resid_pre[start_layer].detach()
    if reps > 1:
        hidden = hidden.repeat(reps, 1, 1)
    with bridge.hooks(fwd_hooks=list(hooks)):
        for index in range(start_layer, len(bridge.blocks)):
            hidden = _first(_run_block(model, capture, index, hidden, reps))
    return hidden


def prediction_logits(
    model: CircuitModel, final: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Logits at one position per prompt: the family's prediction head on those rows only
    (GPT-2: final LayerNorm and unembedding; BERT and DistilBERT: the whole MLM head, read at
    each prompt's ``[MASK]``, which is what ``positions`` holds for a masked model)."""
    return head_logits(model, _rows(final, positions)[:, 0])


def head_logits(model: CircuitModel, rows: torch.Tensor) -> torch.Tensor:
    """The family's prediction head on residual rows leaving the last block ([n, d_model])."""
    # Under device_map the head may sit on another device than the last block.
    head = model.family_entry.prediction_modules(model.hf_model)
    first = next((d for d in map(_module_device, head) if d is not None), None)
    logits = model.family_entry.prediction_logits(model.hf_model,
                                                  _pad_rows(_to_device(rows, first)))
    return logits[: rows.shape[0]]


#: Work on the prediction rows alone (the last block past its attention, the prediction head) runs
#: on at least this many rows, padded with copies of the first: BLAS libraries switch to other
#: kernels for matrices of very few rows, which sum each dot product in another order; from 4
#: rows on, the CPU build measured computes every row bit for bit as in the full batch.
MIN_ROWS = 16


def _pad_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with copies of its first row appended up to ``MIN_ROWS`` (callers slice the
    padding off again)."""
    short = MIN_ROWS - rows.shape[0]
    if short <= 0:
        return rows
    return torch.cat([rows, rows[:1].expand(short, *rows.shape[1:])])


def _rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden[i, positions[i mod batch]]`` for every row of a (possibly stacked) batch, as
    [rows, 1, d]: a sequence of one, so per-position modules see the rank they always see."""
    reps = hidden.shape[0] // positions.shape[0]
    pos = positions.to(hidden.device)
    pos = pos.repeat(reps) if reps > 1 else pos
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos].unsqueeze(1)


# --------------------------------------------------------------------------- replays that start
# after the ablated part
#
# An ablation hook on layer l's z changes nothing before layer l's output projection, and one on
# its MLP output nothing before the MLP's residual add; so the replay resumes there, with the
# model's own modules (named by the family's ``BlockLayout``) on the clean run's recorded
# tensors: the arithmetic of a full forward, without the part that cannot change. Above the
# ablated layer whole blocks run as in ``replay``, except the last one: there everything after
# attention is per position, so only the prediction rows go through the output projection, the
# MLP and the norms; its keys and values still run at every position, its queries only at the
# prediction rows (see ``_queries_at_rows``).


@dataclass
class _BlockParts:
    """One block's modules named by its family's ``BlockLayout``, resolved once per model."""

    attn_output: Any
    mlp: list[Any]
    mlp_norm: Any | None
    attn_norm: Any | None
    out_norm: Any | None
    device: torch.device | None


class _StopAtOutputProjection(Exception):
    def __init__(self, z: torch.Tensor) -> None:
        super().__init__("stop at the last block's output projection")
        self.z = z


def _block_parts(model: CircuitModel) -> list[_BlockParts] | None:
    """Every block's ``BlockLayout`` modules (memoised), or None when the family declares none."""
    layout = model.family_entry.layout
    if layout is None:
        return None
    memo = model_cache(model)
    parts: list[_BlockParts] | None = memo.get("block_parts")
    if parts is not None:
        return parts
    family = model.family_entry.family
    parts = []
    for block in model.bridge.blocks:
        # The paths are Hugging Face paths inside the layer the bridge block wraps; resolving
        # them there reaches the same (bridged) modules the layer's own forward calls.
        layer = getattr(block, "original_component", None) or block

        def get(path: str | None, layer: Any = layer) -> Any:
            return None if path is None else resolve_module(layer, path, family)

        parts.append(
            _BlockParts(
                attn_output=get(layout.attn_output),
                mlp=[get(path) for path in layout.mlp],
                mlp_norm=get(layout.mlp_norm),
                attn_norm=get(layout.attn_norm),
                out_norm=get(layout.out_norm),
                device=_module_device(block),
            )
        )
    memo["block_parts"] = parts
    return parts


def _after_attention(
    layout: BlockLayout, part: _BlockParts, pre: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """The residual after the attention sublayer, from the residual entering the block and z
    with heads concatenated ([..., n_heads * d_head]); the add is the one HF's block does (IEEE
    addition commutes, so ``attn + pre`` is bit-identical to HF's ``residual + attn``)."""
    attn = _first(part.attn_output(z))
    if layout.post_norm:
        return _first(part.attn_norm(attn + pre))
    return attn + pre


def _mlp_out(layout: BlockLayout, part: _BlockParts, mid: torch.Tensor) -> torch.Tensor:
    """The MLP's output (what ``hook_mlp_out`` reads) from the residual after attention."""
    hidden = mid if layout.post_norm else _first(part.mlp_norm(mid))
    for module in part.mlp:
        hidden = _first(module(hidden))
    return hidden


def _after_mlp(
    layout: BlockLayout, part: _BlockParts, mid: torch.Tensor, mlp_out: torch.Tensor
) -> torch.Tensor:
    """The block's output: the MLP's residual add (and, post-norm, the norm after it)."""
    if layout.post_norm:
        return _first(part.out_norm(mlp_out + mid))
    return mid + mlp_out


def _weights_of(module: Any) -> tuple[torch.dtype, torch.device]:
    parameter = next(iter(module.parameters()), None)
    if parameter is None:
        return torch.get_default_dtype(), torch.device("cpu")
    return parameter.dtype, parameter.device


def pruned_components(model: CircuitModel) -> list[Component] | None:
    """The model's heads and MLPs that write nothing: a head whose rows of the output projection
    are all zero, an MLP whose output does not depend on its input (an output projection of
    zeros). Pruned and idle components both cost nothing when ablated; only the weights tell
    them apart. None for a family that declares no ``BlockLayout`` (its modules are unknown).

    Each layer is probed once: through the output projection, a random vector on each head's
    slice of z (a nonzero slice maps a random vector to zero with probability 0, and a zero
    slice maps every vector to exactly the bias); through the MLP, two random inputs (a zero
    output projection gives both exactly its bias)."""
    parts = _block_parts(model)
    if parts is None:
        return None
    generator = torch.Generator().manual_seed(0)
    n_heads, d_head, d_model = int(model.n_heads), int(model.d_head), int(model.d_model)
    found: list[Component] = []
    with torch.no_grad():
        for layer, part in enumerate(parts):
            dtype, device = _weights_of(part.attn_output)
            probe = torch.zeros(1, n_heads + 1, n_heads * d_head, dtype=torch.float64)
            for head in range(n_heads):
                probe[0, head + 1, head * d_head:(head + 1) * d_head] = torch.randn(
                    d_head, generator=generator, dtype=torch.float64) + 1.0
            out = _first(part.attn_output(probe.to(dtype=dtype, device=device)))[0]
            found += [Component.head_at(layer, head) for head in range(n_heads)
                      if torch.equal(out[head + 1], out[0])]
            if not part.mlp:
                continue
            dtype, device = _weights_of(part.mlp[0])
            hidden = (torch.randn(1, 2, d_model, generator=generator, dtype=torch.float64)
                      + 1.0).to(dtype=dtype, device=device)
            for module in part.mlp:
                hidden = _first(module(hidden))
            if torch.equal(hidden[0, 0], hidden[0, 1]):
                found.append(Component.mlp_at(layer))
    return found


def _merge_heads(z: torch.Tensor) -> torch.Tensor:
    """z as the output projection takes it: [..., n_heads, d_head] -> [..., n_heads * d_head]."""
    return z.reshape(*z.shape[:-2], z.shape[-2] * z.shape[-1])


def _stack(value: torch.Tensor, reps: int) -> torch.Tensor:
    return value if reps == 1 else value.repeat(reps, *([1] * (value.dim() - 1)))


def replay_cache_names(model: CircuitModel) -> list[str]:
    """What a clean run caches so replays can start after the ablated part: every layer's z and
    MLP output (none for a family without a ``BlockLayout``, whose replays run whole blocks)."""
    if model.family_entry.layout is None:
        return []
    layers = range(model.n_layers)
    return [z_hook(i, model) for i in layers] + [mlp_out_hook(i, model) for i in layers]


def clean_mid(model: CircuitModel, capture: Capture, layer: int) -> torch.Tensor:
    """The clean run's residual after layer ``layer``'s attention sublayer [batch, seq, d_model]
    (memoised on the capture): the cached z through the layer's own output projection and add,
    the same arithmetic on the same values as the clean forward."""
    mid = capture.mids.get(layer)
    if mid is not None:
        return mid
    parts = _block_parts(model)
    layout = model.family_entry.layout
    if parts is None or layout is None:
        raise ValueError(f"{model.family_entry.family} declares no BlockLayout; replay whole "
                         "blocks")
    part = parts[layer]
    z = _to_device(_merge_heads(capture.cache[z_hook(layer, model)].detach()), part.device)
    pre = _to_device(capture.resid_pre[layer].detach(), part.device)
    mid = _after_attention(layout, part, pre, z)
    capture.mids[layer] = mid
    return mid


def _hook_point(model: CircuitModel, name: str) -> Any:
    """The bridge's HookPoint called ``name`` (what a hook function gets as ``hook``), or None
    where the bridge lists it under another name (an alias): hooks given here only edit values."""
    points: dict[str, Any] | None = model_cache(model).get("hook_points")
    if points is None:
        try:
            points = dict(model.bridge.hook_dict)
        except Exception:  # a bridge without hook_dict: the hooks still get their activation
            points = {}
        model_cache(model)["hook_points"] = points
    return points.get(name)


def _apply_hooks(fns: Sequence[HookFn], act: torch.Tensor, point: Any) -> torch.Tensor:
    # As a HookPoint does: each function's return value replaces the activation; None keeps it.
    for fn in fns:
        out = fn(act, point)
        if out is not None:
            act = out
    return act


def replay_rows(
    model: CircuitModel,
    capture: Capture,
    start_layer: int,
    positions: torch.Tensor,
    hooks: Sequence[tuple[str, HookFn]] = (),
    reps: int = 1,
) -> torch.Tensor:
    """The residual leaving the last block at ``positions`` ([reps * batch, d_model]) with
    ``hooks`` on layer ``start_layer`` active, ``reps`` copies stacked as in :func:`replay`.

    When every hook sits on ``start_layer``'s z or MLP output and the family declares a
    ``BlockLayout``, the replay starts after the ablated part (see the comment above) and gives
    the numbers of a full forward with those hooks; any other hook replays whole blocks.
    """
    parts = _block_parts(model)
    layout = model.family_entry.layout
    z_name, mlp_name = z_hook(start_layer, model), mlp_out_hook(start_layer, model)
    if (
        parts is None
        or layout is None
        or any(name not in (z_name, mlp_name) for name, _ in hooks)
        or z_name not in capture.cache
        or mlp_name not in capture.cache
    ):
        return _rows(replay(model, capture, start_layer, hooks, reps=reps), positions)[:, 0]
    z_fns = [fn for name, fn in hooks if name == z_name]
    mlp_fns = [fn for name, fn in hooks if name == mlp_name]
    part = parts[start_layer]
    last = start_layer == len(parts) - 1
    # In the last block only the prediction rows matter, and every step after attention is per
    # position; but an MLP hook in a replay whose z is edited too must see that MLP output at
    # every position (a hook may read any position), so that rare stack runs in full.
    rows_only = last and not (z_fns and mlp_fns)
    if z_fns:
        z = _apply_hooks(
            z_fns, _stack(capture.cache[z_name].detach(), reps), _hook_point(model, z_name)
        )
        z3 = _to_device(_merge_heads(z), part.device)
        pre = _stack(_to_device(capture.resid_pre[start_layer].detach(), part.device), reps)
        if rows_only:
            z3, pre = _pad_rows(_rows(z3, positions)), _pad_rows(_rows(pre, positions))
        mid = _after_attention(layout, part, pre, z3)
        mlp_out = _apply_hooks(mlp_fns, _mlp_out(layout, part, mid), _hook_point(model, mlp_name))
    else:
        mid = _stack(clean_mid(model, capture, start_layer), reps)
        mlp_out = _apply_hooks(
            mlp_fns,
            _stack(_to_device(capture.cache[mlp_name].detach(), part.device), reps),
            _hook_point(model, mlp_name),
        )
        if rows_only:
            mid = _pad_rows(_rows(mid, positions))
            mlp_out = _pad_rows(_rows(mlp_out, positions))
    post = _after_mlp(layout, part, mid, _to_device(mlp_out, part.device))
    if last:
        return (post if rows_only else _rows(post, positions))[: positions.shape[0] * reps, 0]
    hidden = post
    for index in range(start_layer + 1, len(parts) - 1):
        hidden = _first(_run_block(model, capture, index, hidden, reps))
    return _last_block_rows(model, capture, hidden, positions, reps)


def _last_block_rows(
    model: CircuitModel,
    capture: Capture,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    reps: int,
) -> torch.Tensor:
    """The last block on ``hidden`` at the prediction rows: its keys and values run at every
    position, its queries on the rows only, and it stops at the output projection; the rest
    runs on the rows."""
    parts = _block_parts(model)
    layout = model.family_entry.layout
    assert parts is not None and layout is not None
    index = len(parts) - 1
    part = parts[index]

    def stop(module: Any, args: tuple[Any, ...]) -> None:
        raise _StopAtOutputProjection(args[0])

    handles = [part.attn_output.register_forward_pre_hook(stop)]
    handles += _queries_at_rows(model.bridge.blocks[index], positions)
    try:
        out = _run_block(model, capture, index, hidden, reps)
    except _StopAtOutputProjection as stopped:
        z = stopped.z
    else:
        # The attention never called its output projection as a module (a bridge that sums
        # per-head results itself): the block ran to its end; its rows are exact too (the
        # queries elsewhere were left at zero, and no row reads another row's query).
        return _rows(_first(out), positions)[:, 0]
    finally:
        for handle in handles:
            handle.remove()
    pre = _pad_rows(_rows(_to_device(hidden, part.device), positions))
    mid = _after_attention(layout, part, pre, _pad_rows(_rows(z, positions)))
    post = _after_mlp(layout, part, mid, _mlp_out(layout, part, mid))
    return post[: positions.shape[0] * reps, 0]


def _queries_at_rows(block: Any, positions: torch.Tensor) -> list[Any]:
    """Hooks that make the block's query projection (the bridge's ``attn.q``) compute only the
    prediction rows, returning zeros at every other position; [] when it has none.

    An attention output at position i reads the query at i and the keys and values at every
    position, never another position's query; the last block's output is read at the prediction
    rows only, so the queries elsewhere are work without a reader (about a third of its q, k, v
    projections). The rows' queries are computed on the rows alone, padded to ``MIN_ROWS`` as
    the rest of the last block's row work is, so they are the full projection's numbers; keys,
    values and every shape the attention sees are unchanged.
    """
    attention = getattr(block, "attn", None)
    query = getattr(attention, "q", None)
    if not isinstance(query, torch.nn.Module):
        return []
    shapes: list[tuple[int, int]] = []

    def rows_in(module: Any, args: tuple[Any, ...]) -> Any:
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
            return None  # not the [batch, seq, d_model] call this is for: leave it whole
        hidden = args[0]
        shapes.append((hidden.shape[0], hidden.shape[1]))
        return (_pad_rows(_rows(hidden, positions)), *args[1:])

    def spread_out(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        if not shapes:
            return None
        batch, seq = shapes.pop()
        rows = _first(output)[:batch, 0]
        full = rows.new_zeros(batch, seq, rows.shape[-1])
        pos = positions.to(rows.device)
        pos = pos.repeat(batch // pos.shape[0]) if batch > pos.shape[0] else pos
        full[torch.arange(batch, device=rows.device), pos] = rows
        return full

    return [query.register_forward_pre_hook(rows_in), query.register_forward_hook(spread_out)]


def replay_logit_differences(
    model: CircuitModel,
    capture: Capture,
    start_layer: int,
    tensors: TaskTensors,
    hooks: Sequence[tuple[str, HookFn]] = (),
    reps: int = 1,
) -> torch.Tensor:
    """Correct minus distractor logit per prompt and stacked copy ([reps * n] float32) of a
    replay from ``start_layer`` with ``hooks``: :func:`replay_rows`, then the prediction head on
    those rows for the two answer tokens only (:func:`head_logit_differences`)."""
    rows = replay_rows(model, capture, start_layer, tensors.positions, hooks, reps=reps)
    return head_logit_differences(model, rows, tensors.correct, tensors.distractor)


def _plain_linear(module: Any) -> torch.nn.Linear | None:
    """The ``nn.Linear`` a prediction head's last module is or wraps (a bridge component calls
    its ``original_component`` and nothing else), or None for anything else."""
    for _ in range(4):  # a bridge wraps once; the bound only guards against a cycle
        if isinstance(module, torch.nn.Linear):
            return module
        module = getattr(module, "original_component", None)
        if module is None:
            return None
    return None


#: The two-answer head computes at least this many vocabulary columns (padding with other
#: tokens): BLAS libraries switch to other kernels for very narrow matrices, which sum each dot
#: product in another order; from 16 columns on, the CPU build measured computes every column
#: bit for bit as the full unembedding does. 64 leaves a margin and costs nothing.
MIN_HEAD_COLUMNS = 64


def head_logit_differences(
    model: CircuitModel, rows: torch.Tensor, correct: torch.Tensor, distractor: torch.Tensor
) -> torch.Tensor:
    """``logit_differences(head_logits(model, rows), correct, distractor)`` without most of the
    vocabulary: every head module but the last on the rows, then the unembedding (``F.linear``,
    as ``nn.Linear`` computes it) restricted to the task's answer tokens (padded to
    ``MIN_HEAD_COLUMNS``). On GPT-2-small with 24-token prompts the full unembedding of one row
    per prompt is about 1/75 of a forward, paid once per ablation; this is a few hundredths of it.

    Each logit is the same dot product of the same values, so it is the full head's bit for bit
    wherever the BLAS computes a column the same way however many columns there are (observed on
    CPU from 16 columns on); elsewhere it differs by float rounding. A head whose last module is
    not a plain ``nn.Linear`` gets the full logits.
    """
    *transform, last = model.family_entry.prediction_modules(model.hf_model)
    unembed = _plain_linear(last)
    if unembed is None:
        return logit_differences(head_logits(model, rows), correct, distractor)
    first = next((d for d in map(_module_device, [*transform, unembed]) if d is not None), None)
    hidden = _pad_rows(_to_device(rows, first))
    for module in transform:
        hidden = module(hidden)
    hidden = _to_device(hidden, unembed.weight.device)
    vocab = unembed.weight.shape[0]
    answers = torch.stack([correct, distractor], 1).to(hidden.device)  # [n, 2]
    padding = torch.arange(min(vocab, MIN_HEAD_COLUMNS), device=hidden.device)
    columns = torch.unique(torch.cat([answers.flatten(), padding]))  # sorted
    bias = None if unembed.bias is None else unembed.bias[columns]
    logits = torch.nn.functional.linear(hidden, unembed.weight[columns], bias)[: rows.shape[0]]
    reps = rows.shape[0] // answers.shape[0]
    where = torch.searchsorted(columns, answers)
    picked = logits.gather(1, where.repeat(reps, 1) if reps > 1 else where)  # [rows, 2]
    return (picked[:, 0] - picked[:, 1]).float()


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
    #: [n] float32: the probability the model gives the correct answer (softmax over the whole
    #: vocabulary at the prediction position); None for a run built without it
    answer_prob: torch.Tensor | None = None

    @property
    def mean_logit_diff(self) -> float:
        return float(self.logit_diff.double().mean())


def _whole(prompts: slice | None, n: int) -> bool:
    return prompts is None or (prompts.start in (None, 0) and prompts.stop in (None, n))


def clean_run(
    model: CircuitModel,
    task: Task,
    *,
    cache_names: Sequence[str] = (),
    prompts: slice | None = None,
) -> CleanRun:
    """Capture the clean run (memoised per model and task; extra hooks are cached on demand).

    ``prompts`` restricts the run to a chunk of the task (one of :func:`prompt_chunks`). The
    whole task's run is memoised as before; of the chunks only the latest is kept, so memory
    holds one chunk's capture however many prompts the task has (callers loop chunk-outermost).
    """
    tensors = task_tensors(model, task)
    whole = _whole(prompts, tensors.n_prompts)
    memo = model_cache(model)
    span: tuple[int, int] | None = None
    if whole:
        key: tuple[Any, ...] = ("clean", task.fingerprint())
        existing: CleanRun | None = memo.get(key)
    else:
        assert prompts is not None
        span = (prompts.start or 0, prompts.stop)
        key = ("clean_chunk", task.fingerprint())
        held = memo.get(key)
        existing = held[1] if held is not None and held[0] == span else None
    if existing is not None and all(n in existing.capture.cache for n in cache_names):
        return existing
    if not whole:
        assert prompts is not None
        tensors = tensors.rows(prompts)
        # drop the previous chunk before capturing the next, so two never coexist
        memo.pop(key, None)
    names = set(cache_names) | set(replay_cache_names(model))
    names |= set(existing.capture.cache) if existing else set()
    with torch.inference_mode(False), torch.no_grad():
        capture = run_capture(model, tensors.tokens, cache_names=sorted(names))
        logits = prediction_logits(model, capture.final, tensors.positions)
    check_finite_logits(logits, model.name, f"the clean run of task {task.name!r}")
    diffs = logit_differences(logits, tensors.correct, tensors.distractor)
    run = CleanRun(
        capture=capture,
        logit_diff=diffs,
        top1_correct=logits.argmax(-1) == tensors.correct.to(logits.device),
        answer_prob=answer_probabilities(logits, tensors.correct),
    )
    memo[key] = run if span is None else (span, run)
    return run


def answer_probabilities(logits: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """The probability of the correct answer per prompt ([n, vocab] logits -> [n] float32):
    the softmax over the whole vocabulary, in float32 whatever the model's dtype."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return log_probs[rows, correct.to(logits.device)].exp()


def _clean_per_prompt(model: CircuitModel, task: Task
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt clean logit difference, top-1 correctness and answer probability over the
    whole task, chunk by chunk (a task of one chunk reads its memoised clean run)."""
    n = task_tensors(model, task).n_prompts
    chunks = prompt_chunks(n)
    if len(chunks) == 1:
        run = clean_run(model, task)
        if run.answer_prob is None:  # pragma: no cover - every clean run computes it
            raise AssertionError("a clean run without its answer probabilities")
        return run.logit_diff, run.top1_correct, run.answer_prob
    key = ("clean_metrics", task.fingerprint())
    memo = model_cache(model)
    if key not in memo:
        # last chunk first, so the chunk held afterwards is the first one: the sweep that
        # usually follows starts there and does not capture it again
        # only each chunk's per-prompt metrics are kept, never its capture (one chunk held)
        diffs: list[torch.Tensor] = []
        correct: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        for chunk in reversed(chunks):
            run = clean_run(model, task, prompts=chunk)
            assert run.answer_prob is not None
            diffs.append(run.logit_diff)
            correct.append(run.top1_correct)
            probs.append(run.answer_prob)
            del run
        memo[key] = (torch.cat(diffs[::-1]), torch.cat(correct[::-1]), torch.cat(probs[::-1]))
    return memo[key]


def clean_metrics(model: CircuitModel, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt clean logit difference ([n] float32) and top-1 correctness ([n] bool) over
    the whole task, chunk by chunk (a task of one chunk reads its memoised clean run)."""
    diffs, correct, _ = _clean_per_prompt(model, task)
    return diffs, correct


def clean_answer_probs(model: CircuitModel, task: Task) -> torch.Tensor:
    """Per-prompt probability of the correct answer ([n] float32) in the clean run, from the
    same (memoised) clean runs as :func:`clean_metrics`."""
    return _clean_per_prompt(model, task)[2]


def forget_task(model: CircuitModel, task: Task) -> None:
    """Drop everything memoised for ``task`` on ``model``: its encoding, clean runs and
    reference statistics. For callers that try many throwaway tasks (a shift gate's search
    for the smallest breaking prompt), so the memo does not grow with every draw."""
    fingerprint = task.fingerprint()
    memo = model_cache(model)
    for key in [k for k in memo if isinstance(k, tuple) and fingerprint in k]:
        del memo[key]


@dataclass
class Reference:
    """Activations on the corrupted reference prompts, for mean and resample ablation.

    The per-position means (what mean ablation writes) are always held: per layer [seq, heads,
    d_head] and [seq, d_model], whatever the reference set's size. The activations themselves
    (``z``, ``mlp_out``: per layer [m, seq, ...], what resample ablation picks rows from) are
    held only for a reference set of at most one prompt chunk; a larger set is summed chunk by
    chunk into the means and its picked rows are recomputed per chunk of the task
    (:func:`resample_rows`), so memory does not grow with the number of prompts.
    """

    means_z: list[torch.Tensor]  # per layer [seq, heads, d_head]
    means_mlp: list[torch.Tensor]  # per layer [seq, d_model]
    z: list[torch.Tensor] | None = None  # per layer [m, seq, heads, d_head], one chunk only
    mlp_out: list[torch.Tensor] | None = None  # per layer [m, seq, d_model], one chunk only
    size: int = 0  # m, the number of reference prompts

    def mean_z(self, layer: int) -> torch.Tensor:
        return self.means_z[layer]

    def mean_mlp(self, layer: int) -> torch.Tensor:
        return self.means_mlp[layer]


def _reference_names(model: CircuitModel) -> list[str]:
    layers = range(model.n_layers)
    return [z_hook(i, model) for i in layers] + [mlp_out_hook(i, model) for i in layers]


def reference(model: CircuitModel, task: Task) -> Reference:
    """Run the corrupted reference set once per model and task (memoised), a chunk at a time."""
    key = ("reference", task.fingerprint())
    memo = model_cache(model)
    if key in memo:
        return memo[key]
    tensors = task_tensors(model, task)
    layers = range(model.n_layers)
    names = _reference_names(model)
    m = int(tensors.corrupted.shape[0])
    chunks = prompt_chunks(m)
    if len(chunks) == 1:
        # one chunk: keep the activations (resample picks rows of them); the means are the same
        # reductions as ever, so small tasks give bit-identical values
        with torch.no_grad():
            capture = run_capture(model, tensors.corrupted, cache_names=names)
        zs = [capture.cache[z_hook(i, model)].detach() for i in layers]
        mlps = [capture.cache[mlp_out_hook(i, model)].detach() for i in layers]
        del capture
        ref = Reference(
            means_z=[z.mean(0) for z in zs],
            means_mlp=[o.mean(0) for o in mlps],
            z=zs,
            mlp_out=mlps,
            size=m,
        )
    else:
        # several chunks: only running sums (float64, so the order of chunks hardly matters),
        # never the activations of all m prompts
        sums_z: list[torch.Tensor | None] = [None for _ in layers]
        sums_mlp: list[torch.Tensor | None] = [None for _ in layers]
        for chunk in chunks:
            with torch.no_grad():
                capture = run_capture(model, tensors.corrupted[chunk], cache_names=names)
            for i in layers:
                for sums, name in ((sums_z, z_hook(i, model)), (sums_mlp, mlp_out_hook(i, model))):
                    part = capture.cache[name].detach().double().sum(0)
                    total = sums[i]
                    sums[i] = part if total is None else total + part
            del capture
        dtype = tensors_dtype(model)
        ref = Reference(
            means_z=[(t / m).to(dtype) for t in sums_z if t is not None],
            means_mlp=[(t / m).to(dtype) for t in sums_mlp if t is not None],
            size=m,
        )
    memo[key] = ref
    return ref


def tensors_dtype(model: CircuitModel) -> torch.dtype:
    """The dtype the model computes its activations in (that of its first floating parameter)."""
    for param in model.bridge.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def resample_picks(model: CircuitModel, task: Task, seed: int) -> torch.Tensor:
    """Which reference prompt resample ablation gives each prompt of the task ([n], on CPU):
    seeded, the same for every component, so chunks of the task add up to the whole."""
    n = task_tensors(model, task).n_prompts
    m = reference(model, task).size
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, m, (n,), generator=generator)


def resample_rows(
    model: CircuitModel, task: Task, seed: int, prompts: slice | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the z and MLP output of the reference prompts picked for ``prompts`` (all of
    the task when None): [k, seq, heads, d_head] and [k, seq, d_model].

    A reference set of one chunk is held whole and indexed. A larger one is not held, so the
    picked prompts are run again (one forward of at most a chunk, memoised for the latest chunk
    like the clean run): rows of the same prompts through the same model, equal to the held
    activations up to the float rounding of another batch.
    """
    memo = model_cache(model)
    key = ("resample_rows", task.fingerprint())
    span = (seed, None if prompts is None else (prompts.start or 0, prompts.stop))
    held = memo.get(key)
    if held is not None and held[0] == span:
        return held[1]
    memo.pop(key, None)
    ref = reference(model, task)
    picks = resample_picks(model, task, seed)
    if prompts is not None:
        picks = picks[prompts]
    if ref.z is not None and ref.mlp_out is not None:
        index = picks.to(ref.z[0].device)
        picked = ([z[index] for z in ref.z], [o[index] for o in ref.mlp_out])
        memo[key] = (span, picked)
        return picked
    tensors = task_tensors(model, task)
    names = _reference_names(model)
    layers = range(model.n_layers)
    zs: list[list[torch.Tensor]] = [[] for _ in layers]
    mlps: list[list[torch.Tensor]] = [[] for _ in layers]
    for chunk in prompt_chunks(int(picks.shape[0])):
        tokens = tensors.corrupted[picks[chunk].to(tensors.corrupted.device)]
        with torch.no_grad():
            capture = run_capture(model, tokens, cache_names=names)
        for i in layers:
            zs[i].append(capture.cache[z_hook(i, model)].detach())
            mlps[i].append(capture.cache[mlp_out_hook(i, model)].detach())
        del capture
    rows = (
        [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zs],
        [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in mlps],
    )
    memo[key] = (span, rows)
    return rows


def replacement(
    model: CircuitModel,
    task: Task,
    component: Component,
    ablation: str,
    *,
    seed: int = 0,
    prompts: slice | None = None,
) -> torch.Tensor | None:
    """The value an ablated component's activation is replaced with (None for zero).

    Heads: a [seq, d_head] (mean) or [n, seq, d_head] (resample) slice for that head's z.
    MLPs: [seq, d_model] or [n, seq, d_model]. With ``prompts`` a resample value covers only
    those prompts (the same picks as the whole task's, so chunks add up to the unchunked run);
    a mean value is the whole reference set's for every chunk.
    """
    if ablation == "zero":
        return None
    if ablation == "mean":
        ref = reference(model, task)
        if component.kind == "head":
            return ref.mean_z(component.layer)[:, component.order]
        return ref.mean_mlp(component.layer)
    if ablation == "resample":
        zs, mlps = resample_rows(model, task, seed, prompts)
        if component.kind == "head":
            return zs[component.layer][:, :, component.order]
        return mlps[component.layer]
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
