"""Fit the built-in tasks to a tokenizer: keep the words that stay aligned, pick the answer form.

A built-in task's prompts must all have one token count and its answers must be single tokens.
The paper's word pools do that for a word-level tokenizer and GPT-2, not for every BPE: SmolLM2's
tokenizer splits ``" 5"`` into ``"Ġ"`` + ``"5"`` and ``"Desk"`` at the start of a prompt into
two pieces. Here each pool is narrowed to the words with one token-count signature (the count in
every position the word can take), the answer takes whichever form the tokenizer makes one
piece (``" 5"`` after ``"done in"``, or ``"5"`` after ``"done in "``), and what changed is
written down as a :class:`TaskAdaptation`. When every word fits, the paper's specification comes
back unchanged, so the task (and its fingerprint) is byte-identical to the untokenized one.
Pure Python: any tokenizer callable as ``tokenizer(text, add_special_tokens=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .builtin import (
    _LIST_LENGTH,
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    NUMERAL_MEMBERS,
    NUMERAL_VERBS,
    IoiSpec,
    ListSpec,
    spell,
)
from .task import DroppedWord, Task, TaskAdaptation, TaskValidationError

__all__ = [
    "PoolFit",
    "check_fits",
    "fit_builtin",
    "fit_pool",
    "fits",
    "tokenizer_name",
]

_MAX_NUMBER = ListSpec().max_number
# What precedes an answer in the paper's prompts: enough context for a BPE to merge as it would
# in the whole prompt (pre-tokenizers split at spaces, so the last words decide).
_LIST_CONTEXT = "Desk done in 4. Sun done in"
_IOI_CONTEXT = "When Mary and John went to the store, John gave a drink to"
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


def _unknown_id(tokenizer: Any) -> int | None:
    from .encode import _unknown_id as unknown

    return unknown(tokenizer)


def _is_unknown(tokenizer: Any, text: str) -> bool:
    unk = _unknown_id(tokenizer)
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
        if any(_is_unknown(tokenizer, form) for form in forms):
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


def _answer_refusal(tokenizer: Any, answer: str, context: str | None) -> str | None:
    """Why ``answer`` cannot follow ``context`` as one token (None when it can).

    With a context (causal models) the prompt plus the answer must encode as the prompt's
    tokens plus the answer's token, which catches a tokenizer that drops or merges a trailing
    space."""
    ids = token_ids(tokenizer, answer)
    if len(ids) != 1:
        return f"{answer!r} is {len(ids)} tokens {pieces(tokenizer, answer)}"
    if _is_unknown(tokenizer, answer):
        return f"{answer!r} is not in the tokenizer's vocabulary"
    if context is not None and token_ids(tokenizer, context + answer) != (
        token_ids(tokenizer, context) + ids
    ):
        joined = pieces(tokenizer, context + answer)[-3:]
        return f"{answer!r} after {context[-12:]!r} merges with the prompt ({joined})"
    return None


#: Answer forms to try: with a leading space first, so the paper's form wins a tie.
_ANSWER_FORMS = (True, False)


def _context(base: str, space: bool, kind: str) -> str | None:
    if kind == "masked":
        return None  # the answer replaces the mask; nothing is concatenated
    return base if space else base + " "


def _fit_numbers(
    tokenizer: Any, words: bool, kind: str
) -> tuple[int, bool, tuple[DroppedWord, ...], str]:
    """The largest ``m`` such that 1..m are single-token answers and equally long in a list,
    the answer form that reaches it, the numbers dropped, and the first failure's reason."""
    label = "numbers"
    in_list = [len(token_ids(tokenizer, f" in {spell(k, words)}.")) for k in range(1, 13)]
    best: tuple[int, bool, tuple[DroppedWord, ...], str] | None = None
    for space in _ANSWER_FORMS:
        context = _context(_LIST_CONTEXT, space, kind)
        reached, failures = 0, []
        for k in range(1, _MAX_NUMBER + 1):
            answer = (" " if space else "") + spell(k, words)
            why = _answer_refusal(tokenizer, answer, context)
            if why is None and in_list[k - 1] != in_list[0]:
                why = (f"'in {spell(k, words)}.' is {in_list[k - 1]} tokens in a list "
                       f"(1 makes {in_list[0]})")
            if why is not None:
                failures.append(DroppedWord(label, spell(k, words), why))
            elif not failures:
                reached = k
        dropped = tuple(failures)
        first = failures[0].reason if failures else ""
        if best is None or reached > best[0]:
            best = (reached, space, dropped, first)
    assert best is not None
    return best


def _cannot_build(name: str, tokenizer: Any, why: str, failed: Sequence[DroppedWord]) -> Exception:
    shown = "; ".join(f"{d.word!r} ({d.reason})" for d in failed[:12])
    more = f" and {len(failed) - 12} more" if len(failed) > 12 else ""
    return TaskValidationError(
        f"Built-in task {name!r} cannot be built for tokenizer {tokenizer_name(tokenizer)!r}: "
        f"{why}. Words that failed: {shown or 'none'}{more}. Write a task file with prompts "
        "this tokenizer encodes in equal lengths and single-token answers (schema: "
        f"pytest_circuits/tasks/SCHEMA.md; save_task_file(builtin_task({name!r}), "
        f"'{name}.yaml') writes the paper's prompts to start from)"
    )


def _mask_token(tokenizer: Any, kind: str) -> str | None:
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


def _masked_change(mask: str | None, what: str) -> list[str]:
    if mask is None:
        return []
    return [f"masked variant: prompts end '{what} {mask}.' and are read at the mask"]


def _answer_change(space: bool, example: str, context: str, tokenizer: Any) -> list[str]:
    if space:
        return []
    split = pieces(tokenizer, " " + example)
    return [f"answers without a leading space ({example!r} after {context + ' '!r}, so prompts "
            f"end with a space): the tokenizer splits {' ' + example!r} into {split}"]


def _pool_change(label: str, fit: PoolFit, total: int) -> list[str]:
    if len(fit.kept) == total:
        return []
    words = ", ".join(d.word for d in fit.dropped if d.pool == label)
    return [f"{label}: {len(fit.kept)} of {total} kept (left out: {words})"]


def fit_builtin(
    name: str, tokenizer: Any, kind: str
) -> tuple[ListSpec | IoiSpec, TaskAdaptation | None]:
    """The specification of built-in ``name`` for ``tokenizer`` and what was adapted (None
    when nothing was). Without a tokenizer: the paper's words, masked when ``kind`` says so."""
    mask = _mask_token(tokenizer, kind)
    if name == "ioi":
        spec: ListSpec | IoiSpec = IoiSpec(mask=mask)
    else:
        spec = ListSpec(mask=mask)
    if tokenizer is None:
        changes = _masked_change(mask, "to" if name == "ioi" else "done in")
        adaptation = (
            TaskAdaptation("none (the paper's words)", kind, tuple(changes)) if changes else None
        )
        return spec, adaptation
    if isinstance(spec, IoiSpec):
        spec, changes, dropped = _fit_ioi(tokenizer, kind, mask)
    else:
        spec, changes, dropped = _fit_list(name, tokenizer, kind, mask)
    if not changes:
        return spec, None
    return spec, TaskAdaptation(tokenizer_name(tokenizer), kind, tuple(changes), dropped)


def _fit_list(
    name: str, tokenizer: Any, kind: str, mask: str | None
) -> tuple[ListSpec, list[str], tuple[DroppedWord, ...]]:
    words = name == "numwords"
    top, space, dropped_numbers, first_failure = _fit_numbers(tokenizer, words, kind)
    if top < _LIST_LENGTH + 1:
        raise _cannot_build(
            name, tokenizer,
            f"a list needs the numbers 1..{_LIST_LENGTH + 1} as single-token answers of equal "
            f"length, but only 1..{top} are ({first_failure})",
            dropped_numbers,
        )
    members = fit_pool(tokenizer, "list members", NUMERAL_MEMBERS, (AT_START, AFTER_SPACE))
    verbs = fit_pool(tokenizer, "verbs", NUMERAL_VERBS)
    if len(members.kept) < _LIST_LENGTH + 1:
        raise _cannot_build(
            name, tokenizer,
            f"a list needs {_LIST_LENGTH + 1} members of one token count, but only "
            f"{len(members.kept)} share one", members.dropped,
        )
    if not verbs.kept:
        raise _cannot_build(name, tokenizer, "no list verb is in the vocabulary", verbs.dropped)
    spec = ListSpec(members.kept, verbs.kept, top, space, mask)
    changes = _masked_change(mask, "done in")
    changes += _answer_change(space, spell(5, words), "done in", tokenizer) if mask is None else []
    if space is False and mask is not None:
        changes.append(f"answers without a leading space ({spell(5, words)!r})")
    if top < _MAX_NUMBER:
        left = ", ".join(spell(k, words) for k in range(top + 1, _MAX_NUMBER + 1))
        changes.append(f"numbers 1..{top} (not 1..{_MAX_NUMBER}; left out: {left})")
    changes += _pool_change("list members", members, len(NUMERAL_MEMBERS))
    changes += _pool_change("verbs", verbs, len(NUMERAL_VERBS))
    dropped = dropped_numbers + members.dropped + verbs.dropped
    return spec, changes, dropped


def _fit_ioi(
    tokenizer: Any, kind: str, mask: str | None
) -> tuple[IoiSpec, list[str], tuple[DroppedWord, ...]]:
    best: tuple[PoolFit, bool] | None = None
    for space in _ANSWER_FORMS:
        context = _context(_IOI_CONTEXT, space, kind)

        def accept(word: str, space: bool = space, context: str | None = context) -> str | None:
            return _answer_refusal(tokenizer, (" " if space else "") + word, context)

        names = fit_pool(tokenizer, "names", IOI_NAMES, accept=accept)
        if best is None or len(names.kept) > len(best[0].kept):
            best = (names, space)
    assert best is not None
    names, space = best
    if len(names.kept) < 5:  # the subject, the indirect object and three corrupting names
        raise _cannot_build(
            "ioi", tokenizer,
            f"IOI needs 5 names that are single-token answers, but only {len(names.kept)} are",
            names.dropped,
        )
    places = fit_pool(tokenizer, "places", IOI_PLACES)
    objects = fit_pool(tokenizer, "objects", IOI_OBJECTS)
    for label, fit in (("place", places), ("object", objects)):
        if not fit.kept:
            raise _cannot_build("ioi", tokenizer, f"no {label} is in the vocabulary", fit.dropped)
    spec = IoiSpec(names.kept, places.kept, objects.kept, space, mask)
    changes = _masked_change(mask, "to")
    if mask is None:
        changes += _answer_change(space, names.kept[0], "gave a drink to", tokenizer)
    elif not space:
        changes.append(f"answers without a leading space ({names.kept[0]!r})")
    changes += _pool_change("names", names, len(IOI_NAMES))
    changes += _pool_change("places", places, len(IOI_PLACES))
    changes += _pool_change("objects", objects, len(IOI_OBJECTS))
    return spec, changes, names.dropped + places.dropped + objects.dropped


def check_fits(task: Task, tokenizer: Any, kind: str) -> None:
    """Encode ``task`` as a gate would; a failure names the task, the tokenizer and the way out."""
    from .encode import encode_task

    try:
        encode_task(task, tokenizer, masked=kind == "masked")
    except TaskValidationError as exc:
        why = f"its prompts do not encode ({exc})"
        raise _cannot_build(task.name, tokenizer, why, ()) from None


def fits(task: Task, tokenizer: Any, kind: str = "causal") -> bool:
    """Whether ``task`` encodes for ``tokenizer`` (single-token answers, equal lengths)."""
    from .encode import encode_task

    try:
        encode_task(task, tokenizer, masked=kind == "masked")
    except TaskValidationError:
        return False
    return True
