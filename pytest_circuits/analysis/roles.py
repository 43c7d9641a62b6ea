"""Head roles: what each attention head does, scored in [0, 1] per role, for any family.

Scores (``n`` prompts, query rows ``i``, key positions ``j``, ``A[i, j]`` a head's attention):

- **attention roles** share one formula: the mean, over the query rows that have at least one
  target key, of the attention the row pays to its targets, ``sum_j A[i, j] * T[i, j]``. A head
  attending only to its targets scores 1, one that never does 0. The targets ``T``:

  - ``previous_token``: ``j = i - 1`` (on the task's prompts);
  - ``duplicate_token``: ``j < i`` with the same token as ``i``;
  - ``induction``: ``1 <= j <= i`` whose previous token ``j - 1`` equals token ``i`` (both on
    :data:`N_REPEATED` built-in sequences of :data:`REPEAT_LENGTH` random tokens repeated
    once, after the tokenizer's own special prefix);
  - ``similar_member``: ``i`` and ``j < i`` both *member slots* of the task: positions before
    the prediction position holding, in any prompt of the task, a token of the task's answer
    vocabulary (every correct and distractor answer). In a numbered list these are the listed
    numbers, in IOI the names: a member attends to the earlier members of its kind.

  These are TransformerLens' ``head_detector`` patterns (``previous_token_head``,
  ``duplicate_token_head``, ``induction_head``); its "mul" score divides by *every* query row,
  rows without a target included, so it equals ours times the share of rows that have one
  (:func:`detector_score` computes its formula on our patterns).

- **mover**: per prompt, the attention from the prediction position to the answer's *source*
  (the positions holding the correct answer's token; where the prompt has none, as in a
  numbered list, the last position holding the distractor, the last listed number) times
  ``clip(dA / (COPY_FRACTION * D), 0, 1)``, averaged over prompts. ``dA`` is the head's direct
  effect on the answer's logit: the prediction head's logits on the final residual minus those
  on the final residual without the head's write at the prediction position, centred by the
  mean change over the vocabulary; ``D`` the model's mean clean logit difference (at least
  ``MIN_LOGIT_SCALE``). A head that attends only to the source and whose write alone raises the
  answer's logit by a tenth of the clean logit difference scores 1. For a post-norm family
  (BERT, DistilBERT) later norms rescale the write: the removal from the final residual is
  then a first approximation of its direct effect.
- **inhibition** (tasks whose distractor appears twice before the prediction, IOI's subject):
  the same with the attention to the distractor's last occurrence (S2) and the head's direct
  effect *lowering* the distractor's centred logit.

A head holds a role when its score reaches the role's threshold (``results.ROLE_SPECS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .. import cache
from ..errors import GateConfigError
from ..models import CircuitModel
from ..results.roles import ROLE_SPECS, RoleResult, check_roles
from . import engine
from .similarity import _head_writes
from .store import as_task, model_parts

__all__ = [
    "COPY_FRACTION",
    "MIN_LOGIT_SCALE",
    "N_REPEATED",
    "REPEAT_LENGTH",
    "attention_targets",
    "check_roles",
    "detector_score",
    "head_roles",
    "member_slots",
    "repeated_tokens",
    "target_attention",
]

#: The repeated random-token set: this many sequences of ``REPEAT_LENGTH`` tokens, each twice.
N_REPEATED = 4
REPEAT_LENGTH = 10
#: A write that raises the answer's logit by this share of the clean logit difference counts
#: as copying fully.
COPY_FRACTION = 0.1
#: The least logit difference the copy scale is measured against (the task margin's default).
MIN_LOGIT_SCALE = 0.1
_VERSION = 1


# ----------------------------------------------------------------------------- the formulas


def attention_targets(tokens: torch.Tensor, role: str,
                      slots: Sequence[int] = ()) -> torch.Tensor:
    """The target keys of ``role`` for each query row: [n, seq, seq] bool from [n, seq] token
    ids (``slots``: the member slots, for ``similar_member``). Only keys ``j <= i``."""
    n, seq = tokens.shape
    below = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril(-1)  # j < i
    if role == "previous_token":
        eye = torch.zeros(seq, seq, dtype=torch.bool, device=tokens.device)
        eye[1:, :-1] = torch.eye(seq - 1, dtype=torch.bool, device=tokens.device)
        return eye.expand(n, seq, seq)
    same = tokens[:, :, None] == tokens[:, None, :]  # [n, i, j]
    if role == "duplicate_token":
        return same & below
    if role == "induction":
        # key j's previous token (j - 1 < i) equals token i; j runs 1..i
        out = torch.zeros(n, seq, seq, dtype=torch.bool, device=tokens.device)
        out[:, :, 1:] = (same & below)[:, :, :-1]
        return out
    if role == "similar_member":
        member = torch.zeros(seq, dtype=torch.bool, device=tokens.device)
        member[list(slots)] = True
        pairs = member[:, None] & member[None, :] & below
        return pairs.expand(n, seq, seq)
    raise ValueError(f"{role!r} is not an attention role")  # a coding error


def target_attention(patterns: torch.Tensor, targets: torch.Tensor
                     ) -> tuple[torch.Tensor, int]:
    """Summed attention to the targets over the query rows that have a target ([heads]) and how
    many rows that is, from patterns [n, heads, q, k] and targets [n, q, k]; the score is the
    first divided by the second."""
    mass = (patterns * targets[:, None].to(patterns.dtype)).sum(-1)  # [n, heads, q]
    rows = targets.any(-1)  # [n, q]
    return (mass * rows[:, None].to(mass.dtype)).sum((0, 2)), int(rows.sum())


def detector_score(pattern: torch.Tensor, tokens: torch.Tensor, role: str) -> float:
    """TransformerLens ``head_detector``'s published "mul" score (no BOS or current-token
    exclusion) of one head's pattern [seq, seq] on one prompt's tokens [seq]: the attention
    on the detection pattern summed over every row, over the pattern's total."""
    detection = attention_targets(tokens[None], role)[0].to(pattern.dtype)
    return float((pattern * detection).sum() / pattern.sum())


def member_slots(encoded: Any) -> list[int]:
    """The task's member slots: positions before every prompt's prediction position where some
    prompt holds a token of the task's answer vocabulary (its correct and distractor answers)."""
    vocabulary = set(encoded.correct_ids) | set(encoded.distractor_ids)
    end = min(encoded.positions)
    return [i for i in range(end) if any(row[i] in vocabulary for row in encoded.tokens)]


def _last(row: list[int], token: int, end: int) -> int | None:
    found = [k for k in range(end) if row[k] == token]
    return found[-1] if found else None


def _sources(encoded: Any) -> list[list[int]]:
    """Per prompt, the mover's source positions (see the module's docstring)."""
    out = []
    for row, pos, good, bad in zip(encoded.tokens, encoded.positions, encoded.correct_ids,
                                   encoded.distractor_ids, strict=True):
        found = [k for k in range(pos) if row[k] == good]
        if not found and (last := _last(list(row), bad, pos)) is not None:
            found = [last]
        out.append(found)
    return out


def _repeated_subject(encoded: Any) -> list[int] | None:
    """Per prompt, the distractor's last occurrence (S2), when in every prompt the distractor
    occurs at least twice before the prediction and the correct answer at least once."""
    s2 = []
    for row, pos, good, bad in zip(encoded.tokens, encoded.positions, encoded.correct_ids,
                                   encoded.distractor_ids, strict=True):
        if sum(1 for k in range(pos) if row[k] == bad) < 2 or good not in row[:pos]:
            return None
        s2.append(_last(list(row), bad, pos))
    return s2


# ----------------------------------------------------------------------------- the inputs


def repeated_tokens(model: CircuitModel, seed: int = 0, *, n: int = N_REPEATED,
                    length: int = REPEAT_LENGTH) -> torch.Tensor:
    """``n`` sequences of ``length`` distinct random non-special tokens, each repeated once,
    inside the tokenizer's own special prefix and suffix ([n, prefix + 2 * length + suffix])."""
    tokenizer = model.tokenizer
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    prefix: list[int] = []
    suffix: list[int] = []
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            prefix, suffix = with_special[:k], with_special[k + len(plain):]
            break
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    vocab = min(len(tokenizer), int(model.bridge.cfg.d_vocab))
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        draw = pool[torch.randperm(len(pool), generator=generator)[:length]].tolist()
        rows.append(prefix + draw + draw + suffix)
    return torch.tensor(rows, dtype=torch.long, device=model.device)


def _patterns(capture: engine.Capture, model: CircuitModel) -> torch.Tensor:
    """Every head's pattern, [n, layers * heads, q, k] float64 on the CPU."""
    return torch.cat([capture.cache[engine.pattern_hook(i, model)].detach().double().cpu()
                      for i in range(model.n_layers)], dim=1)


# ----------------------------------------------------------------------------- measuring


def head_roles(model: CircuitModel, task: Any, *, roles: Any = "all",
               n_prompts: int | None = None, seed: int | None = None) -> RoleResult:
    """Every head's score on each of ``roles`` ("all" or a list of names) on ``task`` (a Task or
    a built-in name, built for ``model``), cached by the model's content, the task and the
    options (cache kind "roles")."""
    names = check_roles(roles, "head_roles")
    task = as_task(task, n_prompts, seed, model)
    seed = 0 if seed is None else seed
    parts = {**model_parts(model, task), "roles": list(names), "seed": seed,
             "repeated": [N_REPEATED, REPEAT_LENGTH], "copy_fraction": COPY_FRACTION,
             "version": _VERSION}
    result = cache.cached("roles", parts, lambda: measure_roles(model, task, names, seed))
    own = model.describe()
    if result.model.name != own.name or result.model.source != own.source:
        result = dataclasses.replace(result, model=dataclasses.replace(
            result.model, name=own.name, source=own.source))
    return result


def measure_roles(model: CircuitModel, task: Any, names: Sequence[str], seed: int = 0
                  ) -> RoleResult:
    """:func:`head_roles` without the cache, on a built Task."""
    tensors = engine.task_tensors(model, task)
    encoded = tensors.encoded
    heads = tuple(f"L{layer}H{head}" for layer in range(model.n_layers)
                  for head in range(model.n_heads))
    scores: dict[str, tuple[float, ...]] = {}
    skipped: dict[str, str] = {}
    on_task = [r for r in names if ROLE_SPECS[r].measured_on == "task"]
    on_repeated = [r for r in names if ROLE_SPECS[r].measured_on == "repeated"]
    slots = member_slots(encoded)
    if on_task:
        scores.update(_task_scores(model, task, tensors, on_task, slots, skipped))
    n_repeated = 0
    if on_repeated:
        tokens = repeated_tokens(model, seed)
        n_repeated = int(tokens.shape[0])
        hooks = [engine.pattern_hook(i, model) for i in range(model.n_layers)]
        with torch.no_grad():
            capture = engine.run_capture(model, tokens, cache_names=hooks)
        patterns = _patterns(capture, model)
        del capture
        for role in on_repeated:
            mass, rows = target_attention(patterns, attention_targets(tokens.cpu(), role))
            scores[role] = tuple(float(x) for x in (mass / max(rows, 1)).tolist())
    return RoleResult(
        model=model.describe(), task=task.name, heads=heads,
        scores={r: scores[r] for r in names if r in scores},
        thresholds={r: ROLE_SPECS[r].threshold for r in names if r in scores},
        not_applicable=skipped, n_prompts=tensors.n_prompts, n_repeated=n_repeated,
    )


def _task_scores(model: CircuitModel, task: Any, tensors: engine.TaskTensors,
                 names: Sequence[str], slots: Sequence[int], skipped: dict[str, str]
                 ) -> dict[str, tuple[float, ...]]:
    encoded = tensors.encoded
    n_heads = model.n_layers * model.n_heads
    sums = {r: torch.zeros(n_heads, dtype=torch.float64) for r in names}
    rows = dict.fromkeys(names, 0)
    sources = _sources(encoded)
    subject = _repeated_subject(encoded) if "inhibition" in names else None
    if "inhibition" in names and subject is None:
        skipped["inhibition"] = (f"task {task.name!r} has no repeated subject (its distractor "
                                 "does not occur twice before the prediction in every prompt)")
    if "similar_member" in names and len(slots) < 2:
        skipped["similar_member"] = (f"task {task.name!r} has fewer than two member slots "
                                     "(positions holding answer-vocabulary tokens)")
    if "mover" in names and not any(sources):
        skipped["mover"] = (f"task {task.name!r} never holds the answer or the distractor "
                            "before the prediction position")
    directs = ("mover" in names and "mover" not in skipped) or (
        "inhibition" in names and "inhibition" not in skipped)
    copy_parts: dict[str, list[torch.Tensor]] = {"mover": [], "inhibition": []}
    clean_diffs: list[torch.Tensor] = []
    hooks = [engine.pattern_hook(i, model) for i in range(model.n_layers)]
    if directs:
        hooks += [engine.z_hook(i, model) for i in range(model.n_layers)]
    for chunk in engine.prompt_chunks(tensors.n_prompts):
        part = tensors.rows(chunk)
        with torch.no_grad():
            capture = engine.run_capture(model, part.tokens, cache_names=hooks)
        patterns = _patterns(capture, model)
        tokens = part.tokens.cpu()
        for role in ("previous_token", "similar_member"):
            if role in names and role not in skipped:
                mass, count = target_attention(patterns, attention_targets(tokens, role, slots))
                sums[role] += mass
                rows[role] += count
        if directs:
            effects, diffs = _direct_effects(model, capture, part)
            clean_diffs.append(diffs)
            at = torch.arange(part.n_prompts)
            query = patterns[at, :, part.positions.cpu()]  # [n, heads, k]
            start = chunk.start or 0
            for role, keys, sign, column in (("mover", sources, 1.0, 0),
                                              ("inhibition", subject, -1.0, 1)):
                if role not in names or role in skipped or keys is None:
                    continue
                attention = torch.stack([
                    query[b, :, _as_list(keys[start + b])].sum(-1) for b in range(part.n_prompts)
                ])  # [n, heads]
                copy_parts[role].append(torch.stack([attention, sign * effects[..., column]]))
        del capture
    out = {r: tuple(float(x) for x in (sums[r] / max(rows[r], 1)).tolist())
           for r in ("previous_token", "similar_member") if r in names and r not in skipped}
    if directs:
        scale = COPY_FRACTION * max(float(torch.cat(clean_diffs).mean()), MIN_LOGIT_SCALE)
        for role, parts in copy_parts.items():
            if not parts:
                continue
            attention, effect = torch.cat(parts, dim=1)  # [n, heads] each
            score = attention * (effect / scale).clamp(0.0, 1.0)
            out[role] = tuple(float(x) for x in score.mean(0).tolist())
    return out


def _as_list(keys: int | list[int]) -> list[int]:
    return [keys] if isinstance(keys, int) else list(keys)


def _direct_effects(model: CircuitModel, capture: engine.Capture, part: engine.TaskTensors
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's direct effect at the prediction position on the centred logits of the
    correct answer and of the distractor ([n, heads, 2] float64), and the clean logit
    differences ([n])."""
    n = part.n_prompts
    writes = _head_writes(model, capture.cache, part.positions, limit=n)
    if writes is None:
        raise GateConfigError(
            f"{model.name}: its family declares no block layout, so a head's write (and the "
            "mover and inhibition roles) cannot be measured; choose other roles"
        )
    at = torch.arange(n, device=capture.final.device)
    final = capture.final[at, part.positions.to(capture.final.device)].detach()  # [n, d]
    with torch.no_grad():
        clean = engine.head_logits(model, final).double()  # [n, V]
        good = part.correct.to(clean.device)
        bad = part.distractor.to(clean.device)
        diffs = clean[at.to(clean.device), good] - clean[at.to(clean.device), bad]
        layer_heads = model.n_heads
        effects = []
        for first in range(0, writes.shape[0], layer_heads):
            block = torch.as_tensor(writes[first:first + layer_heads], dtype=final.dtype,
                                    device=final.device)  # [h, n, d]
            without = (final[None] - block).reshape(-1, final.shape[-1])
            logits = engine.head_logits(model, without).double().reshape(
                block.shape[0], n, -1).to(clean.device)
            delta = clean[None] - logits
            delta = delta - delta.mean(-1, keepdim=True)
            rows = torch.arange(n, device=clean.device)
            effects.append(torch.stack([delta[:, rows, good], delta[:, rows, bad]], dim=-1))
    return torch.cat(effects).permute(1, 0, 2).cpu(), diffs.cpu()
