"""Tokenize a Task for one tokenizer and check that it fits (single-token answers, aligned lengths).

Works with any Hugging Face tokenizer (anything callable as ``tokenizer(text,
add_special_tokens=...)["input_ids"]`` with ``convert_ids_to_tokens``); imports no torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .task import Task, TaskValidationError

__all__ = ["EncodedTask", "encode_task", "resolve_position_rule", "unknown_id"]

_SANE_MAX_LENGTH = 1_000_000  # tokenizers report ~1e30 when they have no limit


@dataclass(frozen=True)
class EncodedTask:
    """A task's token ids for one tokenizer; every clean and corrupted row has ``seq_len`` ids."""

    task: Task
    tokens: tuple[tuple[int, ...], ...]
    corrupted_tokens: tuple[tuple[int, ...], ...]
    correct_ids: tuple[int, ...]
    distractor_ids: tuple[int, ...]
    positions: tuple[int, ...]
    corrupted_positions: tuple[int, ...]
    seq_len: int

    def __len__(self) -> int:
        return len(self.tokens)


def resolve_position_rule(task: Task, masked: bool) -> str:
    """``last`` or ``mask`` for ``task`` on a causal (``masked=False``) or masked model."""
    rule = task.position
    if rule == "auto":
        return "mask" if masked else "last"
    if rule == "mask" and not masked:
        raise TaskValidationError(
            f"Task {task.name!r} reads the [MASK] position (position: mask) but the model is "
            "causal; causal models predict at the last token. Use position: auto or last, or "
            "run the task on a masked language model"
        )
    if rule == "last" and masked:
        raise TaskValidationError(
            f"Task {task.name!r} reads the last position (position: last) but the model is a "
            "masked language model, which predicts at a [MASK] token. Use position: auto or "
            "mask, or run the task on a causal model"
        )
    return rule


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    try:
        return [str(piece) for piece in tokenizer.convert_ids_to_tokens(list(ids))]
    except Exception:  # a tokenizer without the method: show ids instead
        return [str(i) for i in ids]


def _short(text: str, width: int = 90) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def unknown_id(tokenizer: Any) -> int | None:
    """The id of a real unknown token; None when there is none or it doubles as BOS/EOS
    (GPT-2's ``<|endoftext|>`` is its unk, bos and eos token at once)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    others = {getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)}
    return None if unk is None or unk in others else unk


def _answer_id(tokenizer: Any, task: Task, index: int, kind: str, answer: str) -> int:
    ids = _ids(tokenizer, answer, special=False)
    unk = unknown_id(tokenizer)
    if len(ids) != 1:
        raise TaskValidationError(
            f"Task {task.name!r}, prompt {index} ({_short(task.prompts[index])}): the {kind} "
            f"{answer!r} is {len(ids)} tokens {_pieces(tokenizer, ids)} for this tokenizer; "
            "logit difference needs a single-token answer. Pick an answer that is one token "
            "(for GPT-2-style tokenizers usually with a leading space, e.g. ' 5')"
        )
    if unk is not None and ids[0] == unk:
        raise TaskValidationError(
            f"Task {task.name!r}, prompt {index} ({_short(task.prompts[index])}): the {kind} "
            f"{answer!r} is not in the tokenizer's vocabulary (it encodes to the unknown token "
            f"{_pieces(tokenizer, ids)}); pick an answer from the vocabulary"
        )
    return ids[0]


def _prediction_position(
    tokenizer: Any, task: Task, prompt: str, ids: list[int], rule: str, label: str
) -> int:
    if rule == "mask":
        mask_id = tokenizer.mask_token_id
        count = ids.count(mask_id)
        if count != 1:
            raise TaskValidationError(
                f"Task {task.name!r}, {label} ({_short(prompt)}): expected exactly one "
                f"{tokenizer.mask_token} token, found {count}; write at most one mask per prompt"
            )
        return ids.index(mask_id)
    # last: skip special tokens the tokenizer appended (e.g. an EOS), never the prompt's own.
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    plain = _ids(tokenizer, prompt, special=False)
    added = _trailing_special(ids, special) - _trailing_special(plain, special)
    return max(0, len(ids) - 1 - max(0, added))


def _trailing_special(ids: Sequence[int], special: set[int]) -> int:
    count = 0
    while count < len(ids) and ids[len(ids) - 1 - count] in special:
        count += 1
    return count


def _check_unknown(tokenizer: Any, task: Task, prompt: str, ids: list[int], label: str) -> None:
    unk = unknown_id(tokenizer)
    if unk is None or unk not in ids:
        return
    pieces = _pieces(tokenizer, _ids(tokenizer, prompt, special=False))
    words = [w for w in prompt.split() if _ids(tokenizer, " " + w, special=False).count(unk)]
    raise TaskValidationError(
        f"Task {task.name!r}, {label} ({_short(prompt)}): contains words the tokenizer does not "
        f"know (they become {tokenizer.unk_token}): {words or pieces}; use words from the "
        "model's vocabulary"
    )


def encode_task(
    task: Task, tokenizer: Any, *, masked: bool = False, max_length: int | None = None
) -> EncodedTask:
    """Tokenize ``task`` and validate it against ``tokenizer``.

    Prompts are encoded with ``add_special_tokens=True`` (so a BOS the tokenizer adds is kept),
    answers with ``add_special_tokens=False`` and must be exactly one known token. All clean
    and corrupted prompts must have the same token length, at most ``max_length`` (default: the
    tokenizer's ``model_max_length`` when it states one). Causal models (``masked=False``) read
    the last position; masked models get ``" " + mask_token`` appended (unless the prompt already
    has it) and read the mask position. Raises :class:`TaskValidationError` with the details.
    """
    rule = resolve_position_rule(task, masked)
    if rule == "mask" and getattr(tokenizer, "mask_token", None) is None:
        raise TaskValidationError(
            f"Task {task.name!r} reads a [MASK] position but the tokenizer has no mask token; "
            "use a masked language model's tokenizer, or position: last with a causal model"
        )

    def prepare(prompt: str) -> str:
        if rule == "mask" and tokenizer.mask_token not in prompt:
            return prompt + " " + tokenizer.mask_token
        return prompt

    clean_text = [prepare(p) for p in task.prompts]
    corrupted_text = [prepare(p) for p in task.corrupted]
    clean_ids = [_ids(tokenizer, p, special=True) for p in clean_text]
    corrupted_ids = [_ids(tokenizer, p, special=True) for p in corrupted_text]
    labels = [f"prompt {i}" for i in range(len(clean_ids))]
    labels += [f"corrupted prompt {j}" for j in range(len(corrupted_ids))]
    all_text = clean_text + corrupted_text
    all_ids = clean_ids + corrupted_ids
    for text, ids, label in zip(all_text, all_ids, labels, strict=True):
        if not ids:
            raise TaskValidationError(
                f"Task {task.name!r}, {label} ({_short(text)}) encodes to no tokens"
            )
        _check_unknown(tokenizer, task, text, ids, label)

    lengths = Counter(len(ids) for ids in all_ids)
    if len(lengths) > 1:
        common = lengths.most_common(1)[0][0]
        offenders = [
            f"{label} has {len(ids)} tokens: {_short(text)}"
            for text, ids, label in zip(all_text, all_ids, labels, strict=True)
            if len(ids) != common
        ][:3]
        seen = ", ".join(f"{n} tokens x{c}" for n, c in sorted(lengths.items()))
        raise TaskValidationError(
            f"Task {task.name!r}: prompts have different token lengths ({seen}); most have "
            f"{common}. Per-position means (mean ablation) and position-wise comparison need "
            "aligned prompts of one template with the same token count. First offenders:\n  "
            + "\n  ".join(offenders)
        )
    seq_len = len(all_ids[0])
    limit = max_length
    if limit is None:
        stated = getattr(tokenizer, "model_max_length", None)
        if isinstance(stated, int) and 0 < stated < _SANE_MAX_LENGTH:
            limit = stated
    if limit is not None and seq_len > limit:
        raise TaskValidationError(
            f"Task {task.name!r}: prompts are {seq_len} tokens, longer than the maximum of "
            f"{limit} ({_short(all_text[0])}); shorten the prompts or raise max_length"
        )

    correct_ids = tuple(
        _answer_id(tokenizer, task, i, "correct answer", a) for i, a in enumerate(task.correct)
    )
    distractor_ids = tuple(
        _answer_id(tokenizer, task, i, "distractor", a) for i, a in enumerate(task.distractors)
    )
    for i, (good, bad) in enumerate(zip(correct_ids, distractor_ids, strict=True)):
        if good == bad:
            raise TaskValidationError(
                f"Task {task.name!r}, prompt {i} ({_short(task.prompts[i])}): the correct answer "
                f"{task.correct[i]!r} and the distractor {task.distractors[i]!r} are the same "
                f"token {_pieces(tokenizer, [good])} for this tokenizer; pick answers it tells "
                "apart"
            )
    positions = tuple(
        _prediction_position(tokenizer, task, text, ids, rule, label)
        for text, ids, label in zip(clean_text, clean_ids, labels, strict=False)
    )
    corrupted_positions = tuple(
        _prediction_position(tokenizer, task, text, ids, rule, label)
        for text, ids, label in zip(
            corrupted_text, corrupted_ids, labels[len(clean_ids):], strict=True
        )
    )
    return EncodedTask(
        task=task,
        tokens=tuple(tuple(ids) for ids in clean_ids),
        corrupted_tokens=tuple(tuple(ids) for ids in corrupted_ids),
        correct_ids=correct_ids,
        distractor_ids=distractor_ids,
        positions=positions,
        corrupted_positions=corrupted_positions,
        seq_len=seq_len,
    )
