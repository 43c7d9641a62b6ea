"""Fitting words to a tokenizer: keep the words that stay aligned, pick the answer form.

A built-in task's prompts must all have one token count and its answers must be single tokens.
The paper's word pools do that for a word-level tokenizer and GPT-2, not for every BPE: SmolLM2's
tokenizer splits ``" 5"`` into ``"Ġ"`` + ``"5"`` and ``"Desk"`` at the start of a prompt into
two pieces. Here each pool is narrowed to the words with one token-count signature (the count in
every position the word can take), the answer takes whichever form the tokenizer makes one
piece (``" 5"`` after ``"done in"``, or ``"5"`` after ``"done in "``), and what changed is
written down as a :class:`TaskAdaptation`. When every word fits, the paper's specification comes
back unchanged, so the task (and its fingerprint) is byte-identical to the untokenized one.
Each built-in task's module (``tasks/builtin/``) fits its own pools with the helpers here, and
draws its shifted examples from pools narrowed the same way.
Pure Python: any tokenizer callable as ``tokenizer(text, add_special_tokens=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .encode import encode_task, unknown_id
from .task import DroppedWord, Task, TaskValidationError

__all__ = [
    "AFTER_SPACE",
    "ANSWER_FORMS",
    "AT_START",
    "PoolFit",
    "Position",
    "answer_change",
    "answer_context",
    "answer_refusal",
    "cannot_build",
    "cannot_shift",
    "check_fits",
    "fit_pool",
    "fits",
    "is_unknown",
    "mask_token",
    "masked_change",
    "pieces",
    "pool_change",
    "preferring",
    "shift_pool",
    "token_ids",
    "tokenizer_name",
]

_DEFAULT_MASK = "[MASK]"


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """``text``'s ids without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pieces(tokenizer: Any, text: str) -> list[str]:
    """``text``'s tokens as strings (ids when the tokenizer cannot name them)."""
    ids = token_ids(tokenizer, text)
    try:
        return [str(p) for p in tokenizer.convert_ids_to_tokens(ids)]
    except Exception:  # a minimal tokenizer: show ids instead
        return [str(i) for i in ids]


def tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return str(name)


def is_unknown(tokenizer: Any, text: str) -> bool:
    """Whether ``text`` encodes to the tokenizer's unknown token."""
    unk = unknown_id(tokenizer)
    return unk is not None and unk in token_ids(tokenizer, text)


@dataclass(frozen=True)
class PoolFit:
    """The words of a pool that share one token-count signature, and those left out."""

    kept: tuple[str, ...]
    dropped: tuple[DroppedWord, ...]


#: A position a word can take: a label for messages and how the word reads there.
Position = tuple[str, Callable[[str], str]]
AFTER_SPACE: Position = ("after a space", lambda w: " " + w)
AT_START: Position = ("at the start of a prompt", lambda w: w)


def fit_pool(
    tokenizer: Any,
    label: str,
    words: Sequence[str],
    positions: Sequence[Position] = (AFTER_SPACE,),
    *,
    accept: Callable[[str], str | None] | None = None,
) -> PoolFit:
    """The largest group of ``words`` with the same token count in every one of ``positions``
    (ties: the fewer tokens), in pool order. ``accept`` returns why a word is refused outright
    (None to keep it); unknown words are refused."""
    signatures: dict[str, tuple[int, ...]] = {}
    dropped: list[DroppedWord] = []
    for word in words:
        forms = [form(word) for _, form in positions]
        if any(is_unknown(tokenizer, form) for form in forms):
            dropped.append(DroppedWord(label, word, "not in the tokenizer's vocabulary"))
            continue
        why = accept(word) if accept is not None else None
        if why is not None:
            dropped.append(DroppedWord(label, word, why))
            continue
        signatures[word] = tuple(len(token_ids(tokenizer, form)) for form in forms)
    if not signatures:
        return PoolFit((), tuple(dropped))
    counts: dict[tuple[int, ...], int] = {}
    for signature in signatures.values():
        counts[signature] = counts.get(signature, 0) + 1
    best = max(counts, key=lambda sig: (counts[sig], -sum(sig)))
    kept = tuple(w for w in words if signatures.get(w) == best)
    for word, signature in signatures.items():
        if signature != best:
            where = ", ".join(
                f"{n} tokens {pieces(tokenizer, form(word))} {place}"
                for n, (place, form) in zip(signature, positions, strict=True)
            )
            usual = "/".join(str(n) for n in best)
            dropped.append(DroppedWord(label, word, f"{where} (the others: {usual})"))
    order = {w: i for i, w in enumerate(words)}
    dropped.sort(key=lambda d: order.get(d.word, 0))
    return PoolFit(kept, tuple(dropped))


def answer_refusal(tokenizer: Any, answer: str, context: str | None) -> str | None:
    """Why ``answer`` cannot follow ``context`` as one token (None when it can).

    With a context (causal models) the prompt plus the answer must encode as the prompt's
    tokens plus the answer's token, which catches a tokenizer that drops or merges a trailing
    space."""
    ids = token_ids(tokenizer, answer)
    if len(ids) != 1:
        return f"{answer!r} is {len(ids)} tokens {pieces(tokenizer, answer)}"
    if is_unknown(tokenizer, answer):
        return f"{answer!r} is not in the tokenizer's vocabulary"
    if context is not None and token_ids(tokenizer, context + answer) != (
        token_ids(tokenizer, context) + ids
    ):
        joined = pieces(tokenizer, context + answer)[-3:]
        return f"{answer!r} after {context[-12:]!r} merges with the prompt ({joined})"
    return None


#: Answer forms to try: with a leading space first, so the paper's form wins a tie.
ANSWER_FORMS = (True, False)


def answer_context(base: str, space: bool, kind: str) -> str | None:
    """What an answer follows when a causal prompt ends in ``base`` (with a trailing space when
    answers take none); None for a masked model."""
    if kind == "masked":
        return None  # the answer replaces the mask; nothing is concatenated
    return base if space else base + " "


def cannot_build(name: str, tokenizer: Any, why: str, failed: Sequence[DroppedWord]) -> Exception:
    shown = "; ".join(f"{d.word!r} ({d.reason})" for d in failed[:12])
    more = f" and {len(failed) - 12} more" if len(failed) > 12 else ""
    return TaskValidationError(
        f"Built-in task {name!r} cannot be built for tokenizer {tokenizer_name(tokenizer)!r}: "
        f"{why}. Words that failed: {shown or 'none'}{more}. Write a task file with prompts "
        "this tokenizer encodes in equal lengths and single-token answers (schema: "
        f"pytest_circuits/tasks/SCHEMA.md; save_task_file(builtin_task({name!r}), "
        f"'{name}.yaml') writes the paper's prompts to start from)"
    )


def cannot_shift(
    task: str, shift: str, shifts: Sequence[str], tokenizer: Any, why: str
) -> TaskValidationError:
    """Shift ``shift`` of ``task`` (whose shifts are ``shifts``) has too few words that fit."""
    return TaskValidationError(
        f"Shift {shift!r} of task {task!r} cannot be drawn for tokenizer "
        f"{tokenizer_name(tokenizer)!r}: {why}; pick another shift (of "
        f"{', '.join(shifts)}) or write the shifted prompts as a task file"
    )


def shift_pool(
    tokenizer: Any, label: str, words: Sequence[str], positions: Any, exclude: Sequence[str] = (),
    accept: Any = None,
) -> tuple[str, ...]:
    """``words`` but ``exclude``, narrowed by :func:`fit_pool` when there is a tokenizer."""
    chosen = tuple(w for w in words if w not in exclude)
    if tokenizer is None:
        return chosen
    return fit_pool(tokenizer, label, chosen, positions, accept=accept).kept


def preferring(
    tokenizer: Any, label: str, first: Sequence[str], fallback: Sequence[str], positions: Any,
    need: int, exclude: Sequence[str] = (), accept: Any = None,
) -> tuple[str, ...]:
    """``first``'s fitting words, topped up with ``fallback``'s when fewer than ``need`` fit
    (a toy vocabulary such as the zoo's has no unseen names, only other nouns)."""
    kept = shift_pool(tokenizer, label, first, positions, exclude, accept)
    if len(kept) >= need:
        return kept
    return shift_pool(tokenizer, label, tuple(first) + tuple(fallback), positions, exclude,
                      accept)


def mask_token(tokenizer: Any, kind: str) -> str | None:
    """The mask token a ``kind`` model's prompts end with (None for a causal model)."""
    if kind != "masked":
        return None
    token = getattr(tokenizer, "mask_token", None) if tokenizer is not None else _DEFAULT_MASK
    if not token:
        raise TaskValidationError(
            f"A masked built-in task needs a mask token, but tokenizer "
            f"{tokenizer_name(tokenizer)!r} has none; use kind='causal' for a causal model, or "
            "a masked language model's tokenizer"
        )
    return str(token)


def masked_change(mask: str | None, what: str) -> list[str]:
    if mask is None:
        return []
    return [f"masked variant: prompts end '{what} {mask}.' and are read at the mask"]


def answer_change(space: bool, example: str, context: str, tokenizer: Any) -> list[str]:
    if space:
        return []
    split = pieces(tokenizer, " " + example)
    return [f"answers without a leading space ({example!r} after {context + ' '!r}, so prompts "
            f"end with a space): the tokenizer splits {' ' + example!r} into {split}"]


def pool_change(label: str, fit: PoolFit, total: int) -> list[str]:
    if len(fit.kept) == total:
        return []
    words = ", ".join(d.word for d in fit.dropped if d.pool == label)
    return [f"{label}: {len(fit.kept)} of {total} kept (left out: {words})"]


def check_fits(task: Task, tokenizer: Any, kind: str) -> None:
    """Encode ``task`` as a gate would; a failure names the task, the tokenizer and the way out."""
    try:
        encode_task(task, tokenizer, masked=kind == "masked")
    except TaskValidationError as exc:
        why = f"its prompts do not encode ({exc})"
        raise cannot_build(task.name, tokenizer, why, ()) from None


def fits(task: Task, tokenizer: Any, kind: str = "causal") -> bool:
    """Whether ``task`` encodes for ``tokenizer`` (single-token answers, equal lengths)."""
    try:
        encode_task(task, tokenizer, masked=kind == "masked")
    except TaskValidationError:
        return False
    return True
