"""Custom task files (.yaml/.yml/.json/.jsonl): loading with line-numbered errors, and saving.

YAML or JSON (one document)::

    name: my-task                 # required
    description: what it tests    # optional
    position: auto                # optional: auto | last | mask
    seed: 0                       # optional: integer or null
    prompts:                      # required, at least one
      - prompt: "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in"
        correct: " 5"             # quote answers: YAML drops a leading space and reads 5 as int
        distractor: " 4"
    corrupted:                    # required, at least one; same template and token length
      - "Van done in 7. Hat done in 2. Ring done in 11. Desk done in 4. Sun done in"

JSONL: one JSON object per line; an optional first line is a header
``{"name": ..., "description": ..., "position": ..., "seed": ...}`` (the name defaults to the file
stem); every other line is either ``{"prompt": ..., "correct": ..., "distractor": ...}`` or
``{"corrupted": ...}``. Blank lines are skipped.

Every problem raises :class:`TaskError` as ``FILE:LINE: problem. Fix: ...``. See ``SCHEMA.md``.
A key twice in one mapping or JSON object is an error in every format (JSON readers would keep
the last silently), and so are lists and mappings nested more than :data:`MAX_NESTING` deep (a
task needs three) and files over :data:`MAX_TASK_FILE_BYTES`: the readers recurse, so a hostile
depth would otherwise end in a bare RecursionError.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..yamlfile import Items, Node, YamlError, load_yaml
from .task import MAX_N_PROMPTS, POSITION_RULES, Task, TaskError

__all__ = [
    "MAX_NESTING",
    "MAX_TASK_FILE_BYTES",
    "TASK_FILE_SUFFIXES",
    "load_task_file",
    "save_task_file",
]

TASK_FILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json", ".jsonl")
#: How deep lists and mappings may nest in a task file. A task needs three levels (the document,
#: its prompts list, one prompt); a deeper file is wrong anyway, and refusing it early keeps the
#: recursive readers and checks far from Python's recursion limit.
MAX_NESTING = 32
#: The largest task file read: ten thousand prompts (the most one gate analyses) of a few
#: hundred characters each, with their corrupted prompts, take a few MB.
MAX_TASK_FILE_BYTES = 64 * 1024 * 1024

_TOP_KEYS = ("name", "description", "position", "seed", "prompts", "corrupted")
_HEADER_KEYS = ("name", "description", "position", "seed")
_PROMPT_KEYS = ("prompt", "correct", "distractor")


@dataclass
class _Loc:
    """A parsed value with the 1-based line it starts on (None when unknown)."""

    value: Any
    line: int | None
    key_lines: dict[str, int | None] | None = None

    def key_line(self, key: str) -> int | None:
        """The line of a mapping key (the value's line when unknown)."""
        if self.key_lines and key in self.key_lines:
            return self.key_lines[key]
        return self.value[key].line if isinstance(self.value, dict) else self.line


class _Reporter:
    """Builds ``FILE:LINE: problem. Fix: ...`` errors for one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int | None, problem: str, fix: str = "") -> TaskError:
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        text = f"{where}: {problem}"
        if fix:
            text += f". Fix: {fix}"
        return TaskError(text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}allowed keys: {', '.join(allowed)}"


# ----------------------------------------------------------------------------- parsing


def _yaml_tree(text: str, rep: _Reporter) -> _Loc:
    try:
        document = load_yaml(text)
    except YamlError as exc:
        raise rep.error(exc.line, exc.problem, exc.fix) from None
    if document is None:
        raise rep.error(None, "the file is empty", "write a task (see SCHEMA.md)")
    deep = _too_deep(document)
    if deep is not None:
        raise _nests_too_deeply(rep, deep.line if isinstance(deep, (Node, Items)) else None)
    return _located(document, document.line if isinstance(document, (Node, Items)) else 1)


def _located(value: Any, line: int | None) -> _Loc:
    """The loader's line-numbered tree as :class:`_Loc` values (scalars take their key's or
    item's line)."""
    if isinstance(value, Node):
        return _Loc({key: _located(item, value.value_lines[key]) for key, item in value.items()},
                    value.line, dict(value.lines))
    if isinstance(value, Items):
        return _Loc([_located(item, item_line) for item, item_line in zip(value, value.lines,
                                                                           strict=True)],
                    value.line)
    return _Loc(value, line)


def _plain_tree(value: Any, line: int | None) -> _Loc:
    if isinstance(value, dict):
        return _Loc({k: _plain_tree(v, line) for k, v in value.items()}, line)
    if isinstance(value, list):
        return _Loc([_plain_tree(v, line) for v in value], line)
    return _Loc(value, line)


def _strip(loc: _Loc) -> Any:
    if isinstance(loc.value, dict):
        return {k: _strip(v) for k, v in loc.value.items()}
    if isinstance(loc.value, list):
        return [_strip(v) for v in loc.value]
    return loc.value


class _DuplicateKey(Exception):
    """A JSON object has ``key`` twice (raised by :func:`_unique_keys` out of ``json.loads``)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a dict, unless a key repeats (JSON would keep the last)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def _too_deep(value: Any) -> Any:
    """The first list or mapping of ``value`` nested deeper than :data:`MAX_NESTING` (None when
    none is), found without recursion."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = list(item)
        else:
            continue
        if level > MAX_NESTING:
            return item
        stack.extend((child, level + 1) for child in children)
    return None


_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _nesting_line(text: str) -> int | None:
    """The line on which JSON ``text``'s brackets first nest deeper than :data:`MAX_NESTING`."""
    depth, line = 0, 1
    for token in re.finditer(r"[\[\]{}\n]", _JSON_STRING.sub('""', text)):
        char = token.group()
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line
        else:
            depth -= 1
    return None


def _nests_too_deeply(rep: _Reporter, line: int | None) -> TaskError:
    return rep.error(
        line,
        f"lists and objects nest more than {MAX_NESTING} levels deep; a task needs 3 (the "
        "document, its prompts list, one prompt)",
        "write the task as SCHEMA.md shows: name, prompts and corrupted at the top level, "
        "each prompt a flat object",
    )


_TOO_DEEP = object()  # what _json_value's decoder returned when it ran out of stack


def _json_value(text: str, rep: _Reporter, line: int | None, *, fix: str) -> Any:
    """``text`` parsed as JSON, refusing repeated keys and deep nesting. ``line`` is the JSONL
    line (None for a whole .json file); ``fix`` is what a syntax error's fix says."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        where = exc.lineno if line is None else line
        raise rep.error(where, f"not valid JSON ({exc.msg})", fix) from None
    except RecursionError:  # deeper than the decoder can go: far past MAX_NESTING
        value = _TOO_DEEP
    except _DuplicateKey as exc:
        raise _duplicate(rep, text, line, exc.key) from None
    if value is _TOO_DEEP or _too_deep(value) is not None:
        raise _nests_too_deeply(rep, line if line is not None else _nesting_line(text))
    return value


def _duplicate(rep: _Reporter, text: str, line: int | None, key: str) -> TaskError:
    fix = "keep one of the two (a JSON reader would silently keep only the last)"
    if line is not None:
        return rep.error(line, f"key {key!r} appears twice in this line's object", fix)
    try:  # JSON is (nearly) YAML, whose loader names both lines of a repeated key
        load_yaml(text)
    except YamlError as exc:
        if f"key {key!r} appears twice" in exc.problem:
            return rep.error(exc.line, exc.problem, fix)
    except RecursionError:
        pass
    return rep.error(None, f"key {key!r} appears twice in one object", fix)


def _json_tree(text: str, rep: _Reporter) -> _Loc:
    if not text.strip():
        raise rep.error(None, "the file is empty", "write a task (see SCHEMA.md)")
    data = _json_value(text, rep, None, fix="correct the syntax")
    # JSON is (nearly) YAML: compose it again to learn line numbers; fall back to none.
    try:
        tree = _yaml_tree(text, rep)
        if _strip(tree) == data:
            return tree
    except TaskError:
        pass
    return _plain_tree(data, None)


# ----------------------------------------------------------------------------- schema


def _expect_str(loc: _Loc, what: str, rep: _Reporter, *, example: str) -> str:
    if not isinstance(loc.value, str):
        raise rep.error(
            loc.line,
            f"{what} must be a string, got {_kind(loc.value)} {loc.value!r}",
            f"quote it, e.g. {example}",
        )
    return loc.value


def _header_fields(fields: dict[str, _Loc], rep: _Reporter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "name" in fields:
        name = _expect_str(fields["name"], "'name'", rep, example='name: "my-task"')
        if not name.strip():
            raise rep.error(fields["name"].line, "'name' is empty", "give the task a name")
        out["name"] = name
    if "description" in fields:
        out["description"] = _expect_str(
            fields["description"], "'description'", rep, example='description: "what it tests"'
        )
    if "position" in fields:
        loc = fields["position"]
        if loc.value not in POSITION_RULES:
            raise rep.error(
                loc.line,
                f"'position' must be one of {', '.join(POSITION_RULES)}, got {loc.value!r}",
                "use auto (last token for causal models, [MASK] for masked models)",
            )
        out["position"] = loc.value
    if "seed" in fields:
        loc = fields["seed"]
        bad = isinstance(loc.value, bool) or not isinstance(loc.value, int)
        if loc.value is not None and bad:
            raise rep.error(
                loc.line,
                f"'seed' must be an integer or null, got {_kind(loc.value)} {loc.value!r}",
                "write e.g. seed: 0, or remove the key",
            )
        out["seed"] = loc.value
    return out


def _prompt_record(loc: _Loc, what: str, rep: _Reporter) -> tuple[str, str, str]:
    if not isinstance(loc.value, dict):
        raise rep.error(
            loc.line,
            f"{what} must be a mapping with prompt, correct and distractor, "
            f"got {_kind(loc.value)} {loc.value!r}",
            'write {prompt: "...", correct: " 5", distractor: " 4"}',
        )
    for key in loc.value:
        if key not in _PROMPT_KEYS:
            raise rep.error(
                loc.key_line(key), f"unknown key {key!r} in {what}", _suggest(key, _PROMPT_KEYS)
            )
    for key in _PROMPT_KEYS:
        if key not in loc.value:
            raise rep.error(
                loc.line,
                f"{what} is missing {key!r}",
                f"add {key} (every prompt needs prompt, correct and distractor)",
            )
    prompt = _expect_str(loc.value["prompt"], f"{what}: 'prompt'", rep, example='"... done in"')
    correct = _expect_str(loc.value["correct"], f"{what}: 'correct'", rep, example='" 5"')
    distractor = _expect_str(
        loc.value["distractor"], f"{what}: 'distractor'", rep, example='" 4"'
    )
    if not prompt.strip():
        raise rep.error(loc.value["prompt"].line, f"{what} has an empty prompt", "write a prompt")
    for key, answer in (("correct", correct), ("distractor", distractor)):
        if not answer.strip():
            raise rep.error(
                loc.value[key].line, f"{what} has an empty {key!r}", 'quote the answer, e.g. " 5"'
            )
    if correct == distractor:
        raise rep.error(
            loc.value["distractor"].line,
            f"{what}: correct and distractor are both {correct!r}",
            "the distractor must be a different, wrong answer",
        )
    return prompt, correct, distractor


def _build(rep: _Reporter, header: dict[str, Any], records: list[tuple[str, str, str]],
           corrupted: list[str]) -> Task:
    try:
        return Task(
            name=header["name"],
            prompts=tuple(r[0] for r in records),
            correct=tuple(r[1] for r in records),
            distractors=tuple(r[2] for r in records),
            corrupted=tuple(corrupted),
            position=header.get("position", "auto"),
            seed=header.get("seed"),
            description=header.get("description", ""),
        )
    except TaskError as exc:
        raise rep.error(None, str(exc)) from None


def _task_from_document(root: _Loc, rep: _Reporter) -> Task:
    if not isinstance(root.value, dict):
        raise rep.error(
            root.line,
            f"the top level must be a mapping, got {_kind(root.value)}",
            "write name:, prompts: and corrupted: keys (see SCHEMA.md)",
        )
    fields: dict[str, _Loc] = root.value
    for key in fields:
        if key not in _TOP_KEYS:
            raise rep.error(root.key_line(key), f"unknown key {key!r}", _suggest(key, _TOP_KEYS))
    for key in ("name", "prompts", "corrupted"):
        if key not in fields:
            raise rep.error(root.line, f"missing required key {key!r}", f"add {key}:")
    header = _header_fields(fields, rep)
    prompts = fields["prompts"]
    if not isinstance(prompts.value, list) or not prompts.value:
        raise rep.error(
            prompts.line,
            f"'prompts' must be a non-empty list, got {_kind(prompts.value)} {prompts.value!r}",
            'list items like - {prompt: "...", correct: " 5", distractor: " 4"}',
        )
    records = [
        _prompt_record(item, f"prompts[{index}]", rep) for index, item in enumerate(prompts.value)
    ]
    corrupted_loc = fields["corrupted"]
    if not isinstance(corrupted_loc.value, list) or not corrupted_loc.value:
        raise rep.error(
            corrupted_loc.line,
            f"'corrupted' must be a non-empty list of prompts, got {_kind(corrupted_loc.value)}",
            "list reference prompts of the same template with the key words randomised",
        )
    corrupted = [
        _expect_str(item, f"corrupted[{index}]", rep, example='"Van done in 7. ..."')
        for index, item in enumerate(corrupted_loc.value)
    ]
    return _build(rep, header, records, corrupted)


def _task_from_jsonl(text: str, rep: _Reporter) -> Task:
    header: dict[str, Any] = {"name": rep.path.stem}
    records: list[tuple[str, str, str]] = []
    corrupted: list[str] = []
    seen_record = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        value = _json_value(raw, rep, number, fix="one JSON object per line")
        if not isinstance(value, dict):
            raise rep.error(
                number,
                f"each line must be a JSON object, got {_kind(value)}",
                'write {"prompt": ..., "correct": ..., "distractor": ...} or {"corrupted": ...}',
            )
        loc = _plain_tree(value, number)
        keys = set(value)
        if "corrupted" in keys:
            if keys != {"corrupted"}:
                extra = sorted(keys - {"corrupted"})
                raise rep.error(
                    number,
                    f"a corrupted line has extra keys {extra}",
                    'put only {"corrupted": "..."} on a corrupted line',
                )
            corrupted.append(
                _expect_str(loc.value["corrupted"], "'corrupted'", rep, example='"Van done in 7."')
            )
            seen_record = True
        elif keys & set(_PROMPT_KEYS) or not keys & set(_HEADER_KEYS):
            records.append(_prompt_record(loc, f"prompt on line {number}", rep))
            seen_record = True
        else:
            unknown = sorted(keys - set(_HEADER_KEYS))
            if unknown:
                raise rep.error(number, f"unknown key {unknown[0]!r}", _suggest(
                    unknown[0], _HEADER_KEYS + _PROMPT_KEYS + ("corrupted",)))
            if seen_record:
                raise rep.error(
                    number,
                    "a header line (name/description/position/seed) after prompt lines",
                    "move the header to the first line",
                )
            header.update(_header_fields(loc.value, rep))
            seen_record = True
    if not records:
        raise rep.error(
            None,
            "no prompt lines",
            'add lines like {"prompt": "...", "correct": " 5", "distractor": " 4"}',
        )
    if not corrupted:
        raise rep.error(
            None,
            "no corrupted reference lines; mean ablation needs them",
            'add lines like {"corrupted": "..."} with the same template and token length',
        )
    return _build(rep, header, records, corrupted)


def load_task_file(path: str | os.PathLike[str]) -> Task:
    """Load a task from a ``.yaml``/``.yml``/``.json``/``.jsonl`` file (schema: module docstring).

    Raises :class:`TaskError` naming the file, the line and the fix for any problem.
    """
    file = Path(path)
    rep = _Reporter(file)
    suffix = file.suffix.lower()
    if suffix not in TASK_FILE_SUFFIXES:
        raise rep.error(
            None,
            f"unsupported task file type {file.suffix!r}",
            f"use one of {', '.join(TASK_FILE_SUFFIXES)}",
        )
    if not file.is_file():
        raise rep.error(None, "task file not found", "check the path")
    size = file.stat().st_size
    if size > MAX_TASK_FILE_BYTES:
        raise rep.error(
            None,
            f"the file is {size:,} bytes, more than a task file may be "
            f"({MAX_TASK_FILE_BYTES:,} bytes)",
            f"split it into several tasks (a gate analyses at most {MAX_N_PROMPTS:,} prompts)",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise rep.error(None, f"not UTF-8 text ({exc.reason})", "save it as UTF-8") from None
    if suffix == ".jsonl":
        return _task_from_jsonl(text, rep)
    tree = _json_tree(text, rep) if suffix == ".json" else _yaml_tree(text, rep)
    return _task_from_document(tree, rep)


def _document(task: Task) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": task.name}
    if task.description:
        doc["description"] = task.description
    doc["position"] = task.position
    doc["seed"] = task.seed
    doc["prompts"] = [
        {"prompt": p, "correct": c, "distractor": d}
        for p, c, d in zip(task.prompts, task.correct, task.distractors, strict=True)
    ]
    doc["corrupted"] = list(task.corrupted)
    return doc


def save_task_file(task: Task, path: str | os.PathLike[str]) -> Path:
    """Write ``task`` in the task-file schema; the suffix picks YAML, JSON or JSONL."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in TASK_FILE_SUFFIXES:
        raise TaskError(f"{file}: unsupported task file type; use {', '.join(TASK_FILE_SUFFIXES)}")
    doc = _document(task)
    if suffix == ".jsonl":
        header = {key: doc[key] for key in _HEADER_KEYS if key in doc}
        lines = [json.dumps(header, ensure_ascii=False)]
        lines += [json.dumps(record, ensure_ascii=False) for record in doc["prompts"]]
        lines += [json.dumps({"corrupted": c}, ensure_ascii=False) for c in doc["corrupted"]]
        text = "\n".join(lines) + "\n"
    elif suffix == ".json":
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
    file.write_text(text, encoding="utf-8")
    return file
