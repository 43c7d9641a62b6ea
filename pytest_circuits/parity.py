"""Preflight: the bridge computes what the plain Hugging Face model computes (``bridge_parity``).

Every gate reads logits through the TransformerLens bridge and the engine's capture of it (block
inputs recorded, the family's prediction head applied at the prediction positions). If an
adapter wires a family wrongly (a missed LayerNorm, a wrong head, a causal mask on an encoder),
every number downstream is wrong while looking plausible. ``bridge_parity`` runs the task's
prompts through both the engine's clean run and an independent plain Hugging Face model that
shares the same weight tensors (no copy), and compares the logits over the whole vocabulary at
each prompt's prediction position (the last token, or ``[MASK]`` for masked models).

Tolerance: a logit passes when ``|bridge - plain| <= atol + rtol * scale``, ``scale`` being the
largest absolute plain logit of that prompt's row (so the test is relative to the size of the
logits, not to logits near zero). Defaults per dtype: float32 ``rtol=1e-4, atol=1e-5``;
bfloat16 ``rtol=2e-2`` and float16 ``rtol=5e-3`` (``atol=1e-3``), a few units of their rounding,
since bridge and plain model run the same kernels but may order a few sums differently.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .analysis import engine
from .errors import CircuitsError
from .models import CircuitModel, strip_bridge_names
from .tasks import Task
from .warmcache import read_record, write_record

__all__ = [
    "DEFAULT_TOLERANCES",
    "BridgeParityError",
    "ParityResult",
    "bridge_parity",
    "ensure_bridge_parity",
    "parity_key_parts",
    "plain_hf_model",
]

#: (rtol, atol) per model dtype, as documented above.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-5),
    "float64": (1e-8, 1e-10),
    "bfloat16": (2e-2, 1e-3),
    "float16": (5e-3, 1e-3),
}


#: How many prompt indices a message lists before "... (N more)".
_SHOWN_PROMPTS = 5


class ParityError(CircuitsError, RuntimeError):
    """The plain Hugging Face model could not be rebuilt to compare the bridge against."""


class BridgeParityError(CircuitsError, AssertionError):
    """The bridge's logits differ from the plain model's: no gate on this model can be trusted.

    Carries the :class:`ParityResult` as ``result``.
    """

    def __init__(self, result: ParityResult) -> None:
        if result.plain_nonfinite:
            advice = (
                "The plain Hugging Face model itself computes them, so the model (not the "
                "bridge) is broken on these prompts: an overflow in its dtype (load it with "
                "dtype='float32' to see), weights edited after loading, or a checkpoint that "
                "diverges on these inputs; no gate can measure it"
            )
        else:
            advice = (
                "Every gate on this model reads activations through the bridge, so none is "
                "trustworthy: check the family entry in pytest_circuits/architectures/ "
                "(prediction head, adapter) for this model"
            )
        super().__init__(f"{result.message()}. {advice}")
        self.result = result


@dataclass(frozen=True)
class ParityResult:
    """How far the bridge's logits are from the plain model's on one task.

    ``worst_*`` name the single largest difference (relative to its row's scale): the prompt
    (index and text), the position read, the vocabulary token, and both logits there.
    """

    model: str
    task: str
    dtype: str
    n_prompts: int
    vocab_size: int
    rtol: float
    atol: float
    passed: bool
    max_abs_diff: float
    max_rel_diff: float  # max over logits of |diff| / scale of its row
    worst_prompt_index: int
    worst_prompt: str
    worst_position: int
    worst_token_id: int
    worst_token: str
    worst_bridge_logit: float
    worst_plain_logit: float
    #: indices of the prompts whose logits hold a NaN or an infinity, on the bridge's side and
    #: on the plain model's (such a prompt never passes)
    bridge_nonfinite: tuple[int, ...] = ()
    plain_nonfinite: tuple[int, ...] = ()
    #: the text of the first of those prompts ("" when every logit is finite)
    nonfinite_prompt: str = ""

    def message(self) -> str:
        """One line for a failed (or passed) preflight: the non-finite logits, if any (which
        side, which prompts), else the worst difference."""
        if self.bridge_nonfinite or self.plain_nonfinite:
            return self._nonfinite_message()
        verdict = "matches" if self.passed else "does NOT match"
        return (
            f"{self.model}: the bridge {verdict} the plain Hugging Face model on task "
            f"{self.task!r} ({self.n_prompts} prompts x {self.vocab_size} logits, {self.dtype}; "
            f"tolerance {self.atol:g} + {self.rtol:g} x row scale): largest difference "
            f"{self.max_abs_diff:.3g} ({self.max_rel_diff:.3g} of its row's scale) at prompt "
            f"{self.worst_prompt_index} ({self.worst_prompt!r}), position {self.worst_position}, "
            f"token {self.worst_token!r} (id {self.worst_token_id}): bridge "
            f"{self.worst_bridge_logit:.6g}, plain {self.worst_plain_logit:.6g}"
        )

    def _nonfinite_message(self) -> str:
        def prompts(indices: tuple[int, ...]) -> str:
            shown = ", ".join(str(i) for i in indices[:_SHOWN_PROMPTS])
            more = f", ... ({len(indices) - _SHOWN_PROMPTS} more)" if (
                len(indices) > _SHOWN_PROMPTS) else ""
            return f"{len(indices)} of {self.n_prompts} prompts (index {shown}{more})"

        sides = []
        if self.bridge_nonfinite:
            sides.append(f"the bridge's on {prompts(self.bridge_nonfinite)}")
        if self.plain_nonfinite:
            sides.append(
                f"the plain Hugging Face model's on {prompts(self.plain_nonfinite)}"
            )
        first = min((*self.bridge_nonfinite, *self.plain_nonfinite))
        return (
            f"{self.model}: non-finite logits (NaN or infinite) on task {self.task!r} "
            f"({self.n_prompts} prompts x {self.vocab_size} logits, {self.dtype}): "
            f"{' and '.join(sides)}; the first is prompt {first} ({self.nonfinite_prompt!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plain_hf_model(model: CircuitModel) -> Any:
    """A plain Hugging Face model (no bridge) sharing ``model``'s weight tensors.

    Built on the meta device and given the loaded tensors by assignment, so it costs no weight
    memory; non-persistent buffers (rotary tables, position ids) are taken from the loaded
    model. A model spread with ``device_map`` is dispatched with the same map.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    state = model._hf_state
    if state is None:
        raise ParityError(
            f"{model.name}: the Hugging Face weights were not recorded (the CircuitModel was "
            "not built by load_model); load it with pytest_circuits.models.load_model"
        )
    config = copy.deepcopy(model.hf_model.config)
    auto = AutoModelForCausalLM if model.is_causal else AutoModelForMaskedLM
    with torch.device("meta"):
        plain = auto.from_config(config, attn_implementation="eager", dtype=_dtype(model))
    expected = set(plain.state_dict())
    if set(state) != expected:
        # A raw load_state_dict error would fail every gate on this model without saying why:
        # the recorded weights are not the plain model's (an in-memory model whose keys were
        # renamed, or a config that does not describe these weights).
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ParityError(
            f"{model.name}: the recorded Hugging Face weights do not match a plain "
            f"{type(plain).__name__} built from its config ({len(missing)} missing, e.g. "
            f"{', '.join(missing[:3]) or '-'}; {len(unexpected)} unexpected, e.g. "
            f"{', '.join(unexpected[:3]) or '-'}), so the bridge cannot be checked; save the "
            "model with CircuitModel.save_pretrained(directory) from the plain Hugging Face "
            "weights and load that directory"
        )
    try:
        plain.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # same names, other shapes: the config does not fit
        raise ParityError(
            f"{model.name}: the recorded Hugging Face weights do not fit a plain "
            f"{type(plain).__name__} built from its config ({exc}); load the model from its "
            "saved directory so config and weights agree"
        ) from exc
    buffers = {strip_bridge_names(n): b for n, b in model.hf_model.named_buffers()}
    for name, buffer in list(plain.named_buffers()):
        if buffer.device.type != "meta":
            continue
        source = buffers.get(name)
        if source is None:
            raise ParityError(
                f"{model.name}: the plain model's buffer {name!r} has no counterpart in the "
                "loaded model, so the comparison model cannot be rebuilt"
            )
        owner, _, leaf = name.rpartition(".")
        module = plain.get_submodule(owner) if owner else plain
        persistent = leaf not in getattr(module, "_non_persistent_buffers_set", set())
        module.register_buffer(leaf, source, persistent=persistent)
    if model.device_map and len({str(d) for d in model.device_map.values()}) > 1:
        from accelerate import dispatch_model

        plain = dispatch_model(plain, device_map=model.device_map)
    plain.eval()
    return plain


def _dtype(model: CircuitModel) -> torch.dtype:
    return getattr(torch, model.dtype)


def bridge_parity(
    model: CircuitModel,
    task: Task,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    use_cache: bool = False,
) -> ParityResult:
    """Compare the bridge's logits with the plain Hugging Face model's on ``task``.

    Both are read at each prompt's prediction position, over the whole vocabulary; the bridge
    side is the engine's clean run (what every gate measures). Tolerances default per dtype
    (``DEFAULT_TOLERANCES``; see the module docstring). Never raises on a mismatch: the result
    says whether it passed and names the largest difference.

    ``use_cache=True`` (what the preflight :func:`ensure_bridge_parity` passes) reads the
    verdict stored in the analysis cache directory for this model's content, task and tolerances
    (:func:`parity_key_parts`) instead of running both models, and stores a fresh one there;
    a model with hooks attached (:func:`runtime_hooks`) is always measured and never stored.
    Without a cache directory, or with caching off, it measures, as by default.
    """
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(model.dtype, (2e-2, 1e-3))
    rtol = default_rtol if rtol is None else float(rtol)
    atol = default_atol if atol is None else float(atol)
    if rtol < 0 or atol < 0 or rtol != rtol or atol != atol:
        raise ValueError(f"rtol and atol must be non-negative numbers, got {rtol!r}, {atol!r}")
    if not use_cache or runtime_hooks(model):
        return _measure(model, task, rtol, atol)
    parts = parity_key_parts(model, task, rtol=rtol, atol=atol)
    result = _stored_parity(model, task, parts)
    if result is None:
        result = _measure(model, task, rtol, atol)
        write_record(PARITY_RECORD, parts, result.to_dict())
    return result


def _measure(model: CircuitModel, task: Task, rtol: float, atol: float) -> ParityResult:
    """:func:`bridge_parity` measured: both models run on every prompt."""
    tensors = engine.task_tensors(model, task)
    worst = _Worst()
    plain_model = plain_hf_model(model)
    # prompts in chunks of engine.PROMPT_BATCH: the plain model's full logits [chunk, seq,
    # vocab] are the largest thing here, so memory holds one chunk's, whatever the task's size
    for prompts in engine.prompt_chunks(tensors.n_prompts):
        rows = tensors.rows(prompts)
        with torch.no_grad():
            capture = engine.run_capture(model, rows.tokens)
            ours = engine.prediction_logits(model, capture.final, rows.positions).float().cpu()
            del capture
            full = plain_model(rows.tokens).logits
            index = torch.arange(full.shape[0], device=full.device)
            theirs = full[index, rows.positions.to(full.device)].float().cpu()
            del full
        worst.add(prompts.start or 0, ours, theirs, rtol=rtol, atol=atol)
    del plain_model
    prompt, token = worst.prompt, worst.token
    nonfinite = sorted({*worst.bridge_nonfinite, *worst.plain_nonfinite})
    texts = tensors.encoded.task.prompts
    token_text = model.tokenizer.convert_ids_to_tokens([token])[0]
    return ParityResult(
        model=model.name,
        task=task.name,
        dtype=model.dtype,
        n_prompts=tensors.n_prompts,
        vocab_size=worst.vocab_size,
        rtol=rtol,
        atol=atol,
        passed=worst.passed,
        max_abs_diff=worst.max_abs_diff,
        max_rel_diff=worst.max_rel_diff,
        worst_prompt_index=prompt,
        worst_prompt=tensors.encoded.task.prompts[prompt],
        worst_position=int(tensors.positions[prompt]),
        worst_token_id=token,
        worst_token=str(token_text),
        worst_bridge_logit=worst.bridge_logit,
        worst_plain_logit=worst.plain_logit,
        bridge_nonfinite=tuple(worst.bridge_nonfinite),
        plain_nonfinite=tuple(worst.plain_nonfinite),
        nonfinite_prompt=texts[nonfinite[0]] if nonfinite else "",
    )


class _Worst:
    """The parity verdict and the largest difference, accumulated over chunks of prompts:
    what one comparison of all prompts at once gives (the first largest relative difference
    in prompt order, NaN counted as infinitely large and never a pass)."""

    def __init__(self) -> None:
        self.passed = True
        self.max_abs_diff = float("-inf")
        self.max_rel_diff = float("-inf")
        self.prompt = 0
        self.token = 0
        self.vocab_size = 0
        self.bridge_logit = float("nan")
        self.plain_logit = float("nan")
        self.bridge_nonfinite: list[int] = []
        self.plain_nonfinite: list[int] = []

    def add(
        self, first: int, ours: torch.Tensor, theirs: torch.Tensor, *, rtol: float, atol: float
    ) -> None:
        """One chunk: ``ours`` and ``theirs`` [chunk, vocab] float32, prompts from ``first``."""
        for rows, found in ((ours, self.bridge_nonfinite), (theirs, self.plain_nonfinite)):
            bad = ~torch.isfinite(rows).all(dim=-1)
            found.extend(first + int(i) for i in torch.nonzero(bad).flatten())
        diff = (ours - theirs).abs()
        scale = theirs.abs().amax(-1, keepdim=True).clamp_min(1e-30)
        rel = diff / scale
        # NaN anywhere is the worst possible difference, and never a pass.
        rel = torch.where(torch.isnan(rel), torch.full_like(rel, float("inf")), rel)
        excess = diff - (atol + rtol * scale)
        excess = torch.where(torch.isnan(excess), torch.full_like(excess, float("inf")), excess)
        self.passed = self.passed and bool((excess <= 0).all())
        self.vocab_size = int(ours.shape[1])
        self.max_abs_diff = max(
            self.max_abs_diff, float(torch.nan_to_num(diff, nan=float("inf")).max())
        )
        flat = int(torch.argmax(rel))
        largest = float(rel.reshape(-1)[flat])
        # strictly larger: on a tie the earlier prompt stays, as argmax over all prompts picks
        if largest > self.max_rel_diff:
            self.max_rel_diff = largest
            row, self.token = divmod(flat, ours.shape[1])
            self.prompt = first + row
            self.bridge_logit = float(ours[row, self.token])
            self.plain_logit = float(theirs[row, self.token])


def ensure_bridge_parity(model: CircuitModel, task: Task) -> ParityResult:
    """``bridge_parity`` once per loaded model and task (keyed by ``task.fingerprint()``),
    raising :class:`BridgeParityError` on a mismatch, then and on every later call for that
    model and task.

    The verdict (passed or failed, with its largest difference) is also kept in the analysis
    cache directory when there is one (``bridge_parity(use_cache=True)``), so a later session on
    the same model and task reads it instead of running both models again; a stored failure
    fails as the fresh check did.

    What a gate calls before measuring a model: the check costs one plain forward per model and
    task per process, and a (model, task) that failed it fails every gate on it, naming the
    largest difference. Per task, not per model: a bridge (or a model) can go wrong on one
    task's prompts only (a token no other task uses, a longer prompt), and a verdict on another
    task says nothing about them.
    """
    memo = engine.model_cache(model)
    key = ("bridge_parity", task.fingerprint())
    result: ParityResult | None = memo.get(key)
    if result is None:
        result = bridge_parity(model, task, use_cache=True)
        memo[key] = result
    if not result.passed:
        raise BridgeParityError(result)
    return result


#: The kind of the analysis cache record that holds a parity verdict.
PARITY_RECORD = "parity"


def parity_key_parts(
    model: CircuitModel, task: Task, *, rtol: float | None = None, atol: float | None = None
) -> dict[str, Any]:
    """What a stored parity verdict depends on: the model's content (weights fingerprint,
    tokenizer digest), how it is read (family entry: adapter, prediction head, hooks), the
    task's fingerprint, the dtype, the device (and device map) and the tolerances (default:
    the dtype's); the cache key adds the torch, transformers and transformer-lens versions.
    Not the model's name: a stored verdict is read back under the name of the model asking.

    Neither the weights nor the config say what was attached to the model after loading (a
    forward hook on a module changes what the bridge computes, and is exactly what the check
    exists to catch; a hook's name does not say what its closure does), so a model with hooks
    is never served or stored a verdict (see :func:`bridge_parity`)."""
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(model.dtype, (2e-2, 1e-3))
    rtol = default_rtol if rtol is None else float(rtol)
    atol = default_atol if atol is None else float(atol)
    return {
        "weights_sha256": model.weights_fingerprint,
        "tokenizer_sha256": model.tokenizer_digest,
        "architecture": model.architecture,
        "family_entry": repr(model.family_entry),
        "task_sha256": task.fingerprint(),
        "dtype": model.dtype,
        "device": model.device,
        "device_map": None if model.device_map is None else sorted(
            (str(k), str(v)) for k, v in model.device_map.items()),
        "rtol": rtol,
        "atol": atol,
    }


#: The hook tables of a torch module (forward, backward, state-dict hooks do not change logits).
_HOOK_TABLES = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
)


def _callable_name(function: Any) -> str:
    target = getattr(function, "func", function)  # functools.partial
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"


#: Hooks of these packages are their own machinery (TransformerLens wires capture hooks on the
#: first forward; the engine's are removed after each run; transformers leaves the hooks that
#: record attention weights for ``output_attentions`` on the modules once a forward asked for
#: them), covered by their versions in the key.
_OWN_HOOKS = ("transformer_lens.", "pytest_circuits.", "transformers.utils.output_capturing.")


def runtime_hooks(model: CircuitModel) -> list[list[str]]:
    """Every hook on a module of ``model``'s bridge or Hugging Face model, and every module
    whose ``forward`` was replaced on the instance, as ``[module, table, function]`` (sorted),
    plus torch's global module hooks: what changes the bridge's output beyond the weights.
    TransformerLens' and pytest-circuits' own hooks are left out (see ``_OWN_HOOKS``)."""
    from torch.nn.modules import module as torch_module

    found: set[tuple[str, str, str]] = set()

    def note(where: str, table: str, function: Any) -> None:
        name = _callable_name(function)
        if not name.startswith(_OWN_HOOKS):
            found.add((where, table, name))

    roots = (("bridge", model.bridge), ("hf", model.hf_model))
    for prefix, root in roots:
        for name, module in root.named_modules(remove_duplicate=False):
            where = f"{prefix}:{name}"
            for table in _HOOK_TABLES:
                for hook in (getattr(module, table, None) or {}).values():
                    note(where, table, hook)
            # a TransformerLens hook point wraps each hook added through its own API
            # (``add_hook``, ``bridge.hooks``) in a closure of its module: name what it wraps
            for table in ("fwd_hooks", "bwd_hooks"):
                handles = getattr(module, table, None)
                if isinstance(handles, list):
                    for handle in handles:
                        wrapped = getattr(handle, "user_hook", None)
                        if wrapped is not None:
                            note(where, table, wrapped)
            if "forward" in vars(module):
                note(where, "forward", vars(module)["forward"])
    for table in ("_global_forward_hooks", "_global_forward_pre_hooks",
                  "_global_backward_hooks", "_global_backward_pre_hooks"):
        for hook in (getattr(torch_module, table, None) or {}).values():
            note("torch", table, hook)
    return [list(item) for item in sorted(found)]


def _stored_parity(model: CircuitModel, task: Task, parts: dict[str, Any]) -> ParityResult | None:
    """The verdict stored for ``parts``, under ``model``'s and ``task``'s names; None when none
    is stored or the record does not read back as a parity result (then it is recomputed)."""
    data = read_record(PARITY_RECORD, parts)
    if data is None or set(data) != {f.name for f in fields(ParityResult)}:
        return None
    kinds = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}
    values: dict[str, Any] = {}
    for item in fields(ParityResult):
        value = data[item.name]
        if str(item.type).startswith("tuple"):
            if not isinstance(value, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in value):
                return None
            value = tuple(value)
        else:
            wanted = kinds[str(item.type)]
            if not isinstance(value, wanted) or (bool not in wanted and isinstance(value, bool)):
                return None
            if float in wanted:
                value = float(value)
        values[item.name] = value
    return ParityResult(**{**values, "model": model.name, "task": task.name})
