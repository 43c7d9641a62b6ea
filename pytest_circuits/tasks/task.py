"""The Task data type: clean prompts, answers, distractors and a corrupted reference set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CircuitsError

__all__ = [
    "MAX_N_PROMPTS",
    "POSITION_RULES",
    "DroppedWord",
    "Task",
    "TaskAdaptation",
    "TaskError",
    "TaskValidationError",
    "check_count",
]

#: Where a task reads the model's prediction: ``auto`` picks ``last`` for causal models and
#: ``mask`` for masked models.
POSITION_RULES: tuple[str, ...] = ("auto", "last", "mask")

_FINGERPRINT_VERSION = 1

#: The most prompts one gate analyses. A bound on memory and time (activations of every prompt
#: are held at once per model); split a larger set into several tasks, or use a task file.
MAX_N_PROMPTS = 10_000


class TaskError(CircuitsError, ValueError):
    """A task definition or task file is wrong; the message names where and how to fix it."""


class TaskValidationError(TaskError):
    """A task does not fit a tokenizer (multi-token answer, unequal prompt lengths, ...)."""


def check_count(label: str, value: Any, *, where: str, limit: int) -> int:
    """``value`` as a count in 1..``limit``; a :class:`TaskError` naming the fix otherwise
    (0 and negatives are errors, never replaced by a default)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"{where}: {label} must be an integer, got {value!r}")
    if value < 1:
        raise TaskError(f"{where}: {label} must be at least 1, got {value}")
    if value > limit:
        raise TaskError(
            f"{where}: {label}={value} is more than the limit of {limit:,}; use at most "
            f"{limit:,} (split a larger set into several tasks)"
        )
    return value


def _short(text: str, width: int = 70) -> str:
    """Quote ``text`` for an error message, cut to ``width`` characters."""
    shown = text if len(text) <= width else text[: width - 3] + "..."
    return repr(shown)


def _as_str_tuple(task_name: str, field_name: str, value: Any) -> tuple[str, ...]:
    """Coerce a sequence of strings to a tuple, refusing a bare string or non-strings."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TaskError(
            f"Task {task_name!r}: {field_name} must be a list of strings, "
            f"got {type(value).__name__}; wrap a single prompt in a list"
        )
    items = tuple(value)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TaskError(
                f"Task {task_name!r}: {field_name}[{index}] must be a string, "
                f"got {type(item).__name__} {item!r}; quote it"
            )
    return items


@dataclass(frozen=True)
class DroppedWord:
    """A word a built-in task left out for one tokenizer, and why."""

    pool: str  # "list members", "names", "numbers", ...
    word: str
    reason: str  # "2 tokens ['D', 'esk'] at the start of a prompt"

    def to_dict(self) -> dict[str, str]:
        return {"pool": self.pool, "word": self.word, "reason": self.reason}


@dataclass(frozen=True)
class TaskAdaptation:
    """How a built-in task was adapted to a tokenizer (or to a masked model), in words.

    A built-in task built for a tokenizer keeps the paper's prompts where they fit; this record
    says what differs, so a summary can print it next to the gate's numbers
    (:meth:`summary`). ``None`` on a task means the paper's prompts, unchanged.
    """

    tokenizer: str  # the tokenizer's name or path
    kind: str  # "causal" or "masked"
    changes: tuple[str, ...]  # one line per change, e.g. "numbers 1..9 (not 1..12)"
    dropped: tuple[DroppedWord, ...] = ()

    def summary(self) -> str:
        """One line for a terminal summary or gate headline."""
        return f"adapted to tokenizer {self.tokenizer!r}: " + "; ".join(self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "kind": self.kind,
            "changes": list(self.changes),
            "dropped": [d.to_dict() for d in self.dropped],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskAdaptation:
        try:
            return cls(
                tokenizer=str(data["tokenizer"]),
                kind=str(data["kind"]),
                changes=tuple(str(c) for c in data["changes"]),
                dropped=tuple(DroppedWord(**d) for d in data.get("dropped", ())),
            )
        except (KeyError, TypeError) as exc:
            raise TaskError(f"Task.from_dict: malformed adaptation {data!r} ({exc})") from None


@dataclass(frozen=True)
class Task:
    """A task scored by logit difference: ``logit(correct) - logit(distractor)`` per prompt.

    ``corrupted`` holds reference prompts of the same template and token length as the clean
    ones; mean ablation replaces a component's activation with its per-position mean over them.
    """

    name: str
    prompts: tuple[str, ...]
    correct: tuple[str, ...]
    distractors: tuple[str, ...]
    corrupted: tuple[str, ...]
    position: str = "auto"
    seed: int | None = None
    description: str = field(default="")
    #: What a built-in changed to fit a tokenizer; None for the paper's prompts or a task file.
    adaptation: TaskAdaptation | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskError(f"Task name must be a non-empty string, got {self.name!r}")
        name = self.name
        for field_name in ("prompts", "correct", "distractors", "corrupted"):
            object.__setattr__(
                self, field_name, _as_str_tuple(name, field_name, getattr(self, field_name))
            )
        if not self.prompts:
            raise TaskError(f"Task {name!r} has no prompts; give at least one prompt")
        n = len(self.prompts)
        if len(self.correct) != n or len(self.distractors) != n:
            raise TaskError(
                f"Task {name!r}: {n} prompts but {len(self.correct)} correct answers and "
                f"{len(self.distractors)} distractors; give exactly one of each per prompt"
            )
        for index, prompt in enumerate(self.prompts):
            if not prompt.strip():
                raise TaskError(f"Task {name!r}: prompt {index} is empty; remove it")
            good, bad = self.correct[index], self.distractors[index]
            if not good.strip() or not bad.strip():
                raise TaskError(
                    f"Task {name!r}: prompt {index} ({_short(prompt)}) has an empty answer "
                    f"(correct={good!r}, distractor={bad!r}); give both answers"
                )
            if good == bad:
                raise TaskError(
                    f"Task {name!r}: prompt {index} ({_short(prompt)}) has the same correct "
                    f"answer and distractor {good!r}; the distractor must be a different, "
                    "wrong answer"
                )
        if not self.corrupted:
            raise TaskError(
                f"Task {name!r} has no corrupted reference prompts; mean ablation needs them. "
                "Give prompts of the same template with the answer-relevant words randomised"
            )
        for index, prompt in enumerate(self.corrupted):
            if not prompt.strip():
                raise TaskError(f"Task {name!r}: corrupted prompt {index} is empty; remove it")
        if self.position not in POSITION_RULES:
            raise TaskError(
                f"Task {name!r}: position must be one of {', '.join(POSITION_RULES)}, "
                f"got {self.position!r}"
            )
        bad_seed = isinstance(self.seed, bool) or not isinstance(self.seed, int)
        if self.seed is not None and bad_seed:
            raise TaskError(f"Task {name!r}: seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.description, str):
            raise TaskError(
                f"Task {name!r}: description must be a string, got {type(self.description)}"
            )
        if self.adaptation is not None and not isinstance(self.adaptation, TaskAdaptation):
            raise TaskError(
                f"Task {name!r}: adaptation must be a TaskAdaptation or None, got "
                f"{type(self.adaptation).__name__}"
            )

    def __len__(self) -> int:
        return len(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (lists for the tuples).

        ``adaptation`` appears only when set, so an unadapted task (and its fingerprint) is the
        same as before adaptation records existed.
        """
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "position": self.position,
            "seed": self.seed,
            "prompts": list(self.prompts),
            "correct": list(self.correct),
            "distractors": list(self.distractors),
            "corrupted": list(self.corrupted),
        }
        if self.adaptation is not None:
            data["adaptation"] = self.adaptation.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Rebuild a task from :meth:`to_dict` output; unknown or missing keys raise TaskError."""
        if not isinstance(data, Mapping):
            raise TaskError(f"Task.from_dict needs a mapping, got {type(data).__name__}")
        allowed = {"name", "description", "position", "seed", "prompts", "correct",
                   "distractors", "corrupted", "adaptation"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise TaskError(
                f"Task.from_dict: unknown keys {unknown}; allowed keys: {sorted(allowed)}"
            )
        missing = sorted({"name", "prompts", "correct", "distractors", "corrupted"} - set(data))
        if missing:
            raise TaskError(f"Task.from_dict: missing keys {missing}")
        return cls(
            name=data["name"],
            prompts=data["prompts"],
            correct=data["correct"],
            distractors=data["distractors"],
            corrupted=data["corrupted"],
            position=data.get("position", "auto"),
            seed=data.get("seed"),
            description=data.get("description", ""),
            adaptation=(
                None if data.get("adaptation") is None
                else TaskAdaptation.from_dict(data["adaptation"])
            ),
        )

    def fingerprint(self) -> str:
        """SHA-256 hex digest of a canonical JSON of all fields; stable across runs and machines."""
        payload = {"task_fingerprint_version": _FINGERPRINT_VERSION, **self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def subset(self, n: int) -> Task:
        """The first ``n`` prompts (and the first ``n`` corrupted prompts) as a new task."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TaskError(
                f"Task {self.name!r}: subset size must be a positive integer, got {n!r}"
            )
        if n > len(self.prompts):
            raise TaskError(
                f"Task {self.name!r} has {len(self.prompts)} prompts; cannot take a subset of {n}"
            )
        return Task(
            name=self.name,
            prompts=self.prompts[:n],
            correct=self.correct[:n],
            distractors=self.distractors[:n],
            corrupted=self.corrupted[:n],
            position=self.position,
            seed=self.seed,
            description=self.description,
            adaptation=self.adaptation,
        )
