"""YAML gate files (``circuits.yaml``, ``circuits_*.yaml``): schema, validation and test items.

Each gate in a file becomes one pytest item that runs the matching ``assert_*`` function; a
mistake in the file is a collection error that names the file, the line and the fix. The schema
is documented in ``GATES.md`` next to this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .config.options import (
    SWEEP_METHODS,
    check_atol,
    check_drop_tolerance,
    check_margin,
    closest,
    method_hint,
)
from .dtypes import DTYPES, canonical_dtype
from .errors import CircuitAssertionError, CircuitsError
from .fixtures import memo_of, run_device
from .kinds import KINDS, read_baseline_tolerance
from .kinds.registry import warn_mistakes
from .kinds.roles import read_role_thresholds
from .kinds.shift import check_max_examples
from .results.circuit import check_threshold as check_prune_threshold
from .results.roles import check_roles
from .settings import DEVICE_PATTERN, resolve
from .tasks import BUILTIN_TASKS, TASK_FILE_SUFFIXES
from .tasks.task import MAX_N_PROMPTS
from .yamlfile import Items, Node, YamlError, load_yaml

#: Suffixes of gate files (named ``circuits`` or ``circuits_*``).
GATE_FILE_SUFFIXES = (".yaml", ".yml")


def is_gate_file(path: Path) -> bool:
    """Whether pytest should collect ``path`` as a gate file."""
    return path.suffix in GATE_FILE_SUFFIXES and (
        path.stem == "circuits" or path.stem.startswith("circuits_")
    )


#: Keys of a gate (besides its one kind key), and which of them ``defaults:`` may set.
GATE_KEYS = ("name", "pair", "model", "task", "xfail", "marks", "n_prompts", "seed", "device",
             "dtype", "baseline_tolerance")
RUN_SETTINGS = ("pair", "model", "task", "n_prompts", "seed", "device", "dtype",
                "baseline_tolerance")
#: Analysis keys ``defaults:`` may set; each gate receives those its kind accepts.
ANALYSIS_SETTINGS = ("matching", "direction", "ablation", "similarity", "preset", "margin",
                     "tolerance", "method")
DEFAULT_KEYS = RUN_SETTINGS + ANALYSIS_SETTINGS
TOP_KEYS = ("pairs", "models", "defaults", "gates")
#: Number-valued keys that are not thresholds, each with its gate's own rule.
ANALYSIS_NUMBERS = {"margin": check_margin, "tolerance": check_drop_tolerance,
                    "atol": check_atol, "threshold": check_prune_threshold}
#: Number-valued keys: every kind's thresholds, plus the analysis numbers.
NUMBERS = frozenset(
    {t.name for kind in KINDS.values() for t in kind.thresholds} | set(ANALYSIS_NUMBERS)
)
#: Whole-number keys of a check (n_prompts and seed are gate keys, checked on their own).
INTEGERS = {"max_examples": check_max_examples}
STRINGS = frozenset({"name", "pair", "model", "task", "xfail", "device", "dtype", "matching",
                     "direction", "ablation", "similarity", "shift", "preset", "method"})
#: String keys with a fixed set of values, checked here so a typo is a collection error with
#: its line. The presets are ``analysis.comparison.PRESETS``' names (a test keeps them equal);
#: written out because importing the analysis would load torch at collection.
CHOICES = {"preset": ("paper", "recommended"), "method": SWEEP_METHODS}
#: ``method:`` meant the matching strategy in early releases; it is now the sweep algorithm
#: (``settings.SWEEP_METHODS``), and a matching name written there gets this hint.
MATCHING_NAMES = ("paper", "causal", "tie_aware")


class GateFileError(CircuitsError, ValueError):
    """A gate file is malformed; the message starts with ``file:line:``."""


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ModelRef:
    """A model named in a gate file: where to load it from and the name results carry."""

    source: str  # a relative path made absolute from the gate file's directory
    name: str  # as written in the file (stable across machines, part of baseline keys)


@dataclass(frozen=True)
class GateSpec:
    """One validated gate: what to load, which assertion to run and with which arguments."""

    name: str
    kind: str
    line: int
    task: str
    teacher: ModelRef | None  # None for a single-model gate
    subject: ModelRef  # the student of a pair, or the single model
    arguments: dict[str, Any] = field(default_factory=dict)  # to the assert_* function
    n_prompts: int | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    xfail: str | None = None
    marks: tuple[str, ...] = ()


class _Checker:
    """Validation helpers that prefix each error with the file's line."""

    def fail(self, line: int, message: str) -> GateFileError:
        return GateFileError(f"{line}: {message}")

    def mapping(self, value: Any, line: int, what: str) -> Node:
        if not isinstance(value, Node):
            raise self.fail(line, f"{what} must be a mapping (key: value lines), got "
                                  f"{_kind(value)}")
        return value

    def keys(self, node: Node, allowed: tuple[str, ...], what: str) -> None:
        for key in node:
            if key not in allowed:
                raise self.fail(
                    node.lines[key],
                    f"unknown key {key!r} in {what}{closest(key, allowed)}; allowed keys: "
                    f"{', '.join(allowed)}",
                )

    def value(self, key: str, value: Any, line: int, what: str) -> Any:
        """Check one setting or argument by its name's type."""
        if key in NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(line, f"{what}: {key} must be a number, got {_kind(value)}")
            try:  # the analysis numbers have the gates' own rules, checked here with the line
                if key in ANALYSIS_NUMBERS:
                    ANALYSIS_NUMBERS[key](value, what)
            except CircuitsError as exc:
                raise self.fail(line, str(exc)) from None
            return float(value)
        if key in INTEGERS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(line, f"{what}: {key} must be a whole number, got "
                                      f"{_kind(value)}")
            try:
                return INTEGERS[key](value, what)
            except CircuitsError as exc:
                raise self.fail(line, str(exc)) from None
        if key in ("n_prompts", "seed"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(line, f"{what}: {key} must be a whole number, got "
                                      f"{_kind(value)}")
            if key == "n_prompts" and not 1 <= value <= MAX_N_PROMPTS:
                raise self.fail(line, f"{what}: n_prompts must be 1 to {MAX_N_PROMPTS:,}, got "
                                      f"{value:,}")
            if key == "seed" and value < 0:
                raise self.fail(line, f"{what}: seed must be at least 0, got {value}")
            return value
        if key in STRINGS:
            if not isinstance(value, str) or not value.strip():
                raise self.fail(line, f"{what}: {key} must be a non-empty string, got "
                                      f"{_kind(value)}")
            if key == "device" and not DEVICE_PATTERN.match(value.strip()):
                raise self.fail(line, f"{what}: device {value!r} is not one of auto, cpu, cuda, "
                                      "cuda:N, cuda:auto")
            if key == "dtype" and canonical_dtype(value) is None:
                raise self.fail(line, f"{what}: dtype {value!r} is not one of "
                                      f"{', '.join(DTYPES)}")
            if key == "method" and value in MATCHING_NAMES:
                raise self.fail(line, f"{what}: method: {value} names a matching strategy, but "
                                      "method is now the sweep algorithm (exact or auto); write "
                                      f"matching: {value}")
            if key in CHOICES and value not in CHOICES[key]:
                why = f" ({method_hint(value)})" if key == "method" else ""
                raise self.fail(line, f"{what}: {key} {value!r} is not one of "
                                      f"{', '.join(CHOICES[key])}{closest(value, CHOICES[key])}"
                                      f"{why}")
            return canonical_dtype(value) if key == "dtype" else value
        if key == "components":
            return self.components(value, line, what)
        if key in ("roles", "role_thresholds"):  # the roles_preserved gate's own keys
            plain = value if isinstance(value, str) else (
                dict(value) if isinstance(value, Node) else list(value)
                if isinstance(value, list) else value)
            try:
                if key == "roles":
                    check_roles(plain, what)
                else:
                    read_role_thresholds(plain)
            except CircuitsError as exc:
                raise self.fail(line, str(exc)) from None
            return plain
        if key == "marks":
            return tuple(self.string_list(value, line, f"{what}: marks"))
        if key == "baseline_tolerance":
            return self.tolerance(value, line, what)
        raise AssertionError(f"no type rule for {key!r}")  # pragma: no cover

    def string_list(self, value: Any, line: int, what: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise self.fail(line, f"{what} must be a non-empty list of strings, got "
                                  f"{_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                item_line = value.lines[index] if isinstance(value, Items) else line
                raise self.fail(item_line, f"{what}[{index}] must be a string, got "
                                           f"{_kind(item)}")
        return list(value)

    def components(self, value: Any, line: int, what: str) -> Any:
        if isinstance(value, str):
            return value  # "all", "heads", "mlps" for ablation_robust; checked by the gate
        return self.string_list(value, line, f"{what}: components")

    def tolerance(self, value: Any, line: int, what: str) -> float | dict[str, float]:
        if isinstance(value, Node):
            for metric, number in value.items():
                if isinstance(number, bool) or not isinstance(number, (int, float)):
                    raise self.fail(value.lines[metric], f"{what}: baseline_tolerance.{metric} "
                                                         f"must be a number, got {_kind(number)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(line, f"{what}: baseline_tolerance must be a number or a mapping "
                                  f"metric: number, got {_kind(value)}")
        try:  # finite, not negative, metric names of some gate kind (the gate's: in _gate)
            checked = read_baseline_tolerance(
                dict(value) if isinstance(value, Node) else value, f"{what}: baseline_tolerance")
        except CircuitsError as exc:
            raise self.fail(line, str(exc)) from None
        assert checked is not None
        return checked


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {Node: "a mapping", Items: "a list", bool: "a boolean", str: "a string",
             int: "a number", float: "a number"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


def load_gate_file(path: Path) -> list[GateSpec]:
    """Read and validate a gate file; raise :class:`GateFileError` naming file and line."""
    try:
        document = load_yaml(path.read_text(encoding="utf-8"))
    except YamlError as exc:
        raise GateFileError(f"{path}:{exc}") from None
    try:
        return _gates(document, path.parent)
    except GateFileError as exc:
        raise GateFileError(f"{path}:{exc}") from None


#: Endings that make a model source a file path rather than a hub id.
_FILE_ENDINGS = (".gguf", ".safetensors", ".bin")


def _path_shaped(text: str) -> bool:
    """Whether ``text`` can only be a path (a hub id is ``org/name``): it starts like one, has a
    backslash, a trailing or second ``/``, or names a weight file."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/")
            or text.count("/") > 1 or text.lower().endswith(_FILE_ENDINGS))


def gate_file_source(text: str, base: Path) -> str:
    """Where a model source written in a gate file in ``base`` loads from: a relative path is
    read from the gate file's directory (never the working directory), made absolute; a zoo
    name or hub id stays as written. A missing path stays next to the gate file, so the load
    names that place. Raises ``ValueError`` for a relative name that exists only relative to
    the working directory: it would load from there, which the gate file does not say."""
    if text.startswith("zoo:"):
        return text
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    beside = (base / path).absolute()
    if beside.exists() or _path_shaped(text) and not path.exists():
        return str(beside)
    if path.exists():
        raise ValueError(
            f"model {text!r} is read from the gate file's directory ({str(base.absolute())!r}), "
            f"where {str(beside)!r} does not exist; it exists relative to the working directory "
            f"({os.getcwd()!r}), which a gate file's paths never are: write the path relative "
            "to the gate file, or absolute"
        )
    return text  # a hub id


def _model_ref(check: _Checker, source: str, base: Path, line: int) -> ModelRef:
    try:
        return ModelRef(gate_file_source(source, base), source)
    except ValueError as exc:
        raise check.fail(line, str(exc)) from None


def _gates(document: Any, base: Path) -> list[GateSpec]:
    check = _Checker()
    if document is None:
        raise check.fail(1, "the gate file is empty; declare pairs: and gates:")
    root = check.mapping(document, 1, "the gate file")
    check.keys(root, TOP_KEYS, "the gate file")
    if "gates" not in root:
        raise check.fail(root.line, "the gate file has no gates: list; add at least one gate")

    pairs: dict[str, tuple[ModelRef, ModelRef]] = {}
    for name, spec in check.mapping(root.get("pairs", Node()), root.lines.get("pairs", 1),
                                    "pairs").items():
        line = root["pairs"].lines[name]
        spec = check.mapping(spec, line, f"pair {name!r}")
        check.keys(spec, ("teacher", "student"), f"pair {name!r}")
        for role in ("teacher", "student"):
            if role not in spec:
                raise check.fail(line, f"pair {name!r} has no {role}: add {role}: SOURCE "
                                       "(a hub id, a local directory or zoo:NAME)")
            check.value("model", spec[role], spec.lines[role], f"pair {name!r}: {role}")
        pairs[name] = (_model_ref(check, spec["teacher"], base, spec.lines["teacher"]),
                       _model_ref(check, spec["student"], base, spec.lines["student"]))

    models: dict[str, ModelRef] = {}
    for name, source in check.mapping(root.get("models", Node()), root.lines.get("models", 1),
                                      "models").items():
        line = root["models"].lines[name]
        check.value("model", source, line, f"model {name!r}")
        models[name] = _model_ref(check, source, base, line)

    defaults = check.mapping(root.get("defaults", Node()), root.lines.get("defaults", 1),
                             "defaults")
    check.keys(defaults, DEFAULT_KEYS, "defaults")
    for key, value in defaults.items():
        defaults[key] = check.value(key, value, defaults.lines[key], "defaults")

    gates = root["gates"]
    if not isinstance(gates, Items) or not gates:
        raise check.fail(root.lines["gates"], "gates must be a non-empty list of gates "
                                              "(each item starts with '- name: ...')")
    specs: list[GateSpec] = []
    seen: dict[str, int] = {}
    for index, gate in enumerate(gates):
        spec = _gate(check, gate, gates.lines[index], index, pairs, models, defaults, base)
        if spec.name in seen:
            raise check.fail(spec.line, f"gate name {spec.name!r} is already used by the gate "
                                        f"on line {seen[spec.name]}; gate names are test ids "
                                        "and must be unique in a file")
        seen[spec.name] = spec.line
        specs.append(spec)
    return specs


def _gate(
    check: _Checker, gate: Any, line: int, index: int,
    pairs: dict[str, tuple[ModelRef, ModelRef]], models: dict[str, ModelRef], defaults: Node,
    base: Path,
) -> GateSpec:
    gate = check.mapping(gate, line, f"gates[{index}]")
    line = gate.line
    if "name" not in gate:
        raise check.fail(line, f"gates[{index}] has no name: add name: SOME-ID (the test id)")
    name = check.value("name", gate["name"], gate.lines["name"], f"gates[{index}]")
    if "::" in name or "\n" in name:
        raise check.fail(gate.lines["name"], f"gate name {name!r} may not contain '::' or a "
                                             "line break")
    what = f"gate {name!r}"
    check.keys(gate, GATE_KEYS + tuple(KINDS), what)
    kinds = [k for k in KINDS if k in gate]
    if len(kinds) != 1:
        found = "none" if not kinds else " and ".join(kinds)
        raise check.fail(line, f"{what} must declare exactly one check ({', '.join(KINDS)}); "
                               f"found {found}" + ("; split it into one gate per check"
                                                   if kinds else ""))
    kind_name = kinds[0]
    kind = KINDS[kind_name]
    settings = {key: defaults[key] for key in defaults}
    lines = {key: defaults.lines[key] for key in defaults}
    for key in GATE_KEYS:
        if key in gate and key != "name":
            settings[key] = check.value(key, gate[key], gate.lines[key], what)
            lines[key] = gate.lines[key]

    arguments_node = check.mapping(gate[kind_name], gate.lines[kind_name],
                                   f"{what}: {kind_name}")
    check.keys(arguments_node, kind.keys, f"{what}: {kind_name}")
    arguments = {key: settings[key] for key in ANALYSIS_SETTINGS
                 if key in settings and key in kind.keys}
    for key, value in arguments_node.items():
        arguments[key] = check.value(key, value, arguments_node.lines[key],
                                     f"{what}: {kind_name}")
    kind_line = gate.lines[kind_name]
    for key in kind.required + kind.required_thresholds:
        if key not in arguments:
            raise check.fail(kind_line, f"{what}: {kind_name} needs {key}: add {key}: VALUE")
    one_of = kind.optional_thresholds
    if one_of and not any(key in arguments for key in one_of):
        raise check.fail(kind_line, f"{what}: {kind_name} sets no threshold, so it would check "
                                    f"nothing: add at least one of {', '.join(one_of)}")
    for key, value in arguments.items():
        if key in NUMBERS and key not in ANALYSIS_NUMBERS:
            try:  # the range, here, so a wrong threshold is a collection error with its line
                kind.threshold(key).read(value, f"{what}: {kind_name}")
            except CircuitsError as exc:
                raise check.fail(arguments_node.lines.get(key, kind_line), str(exc)) from None
            # a value that is probably a mistake warns here too, before any model loads
            where = f"line {arguments_node.lines.get(key, kind_line)}: {what}: {kind_name}"
            warn_mistakes([kind.threshold(key)], {key: value}, where)
    if "baseline_tolerance" in settings:
        try:  # a metric of another kind (from defaults:) is a misspelling for this gate
            read_baseline_tolerance(settings["baseline_tolerance"],
                                    f"{what}: baseline_tolerance", kind)
        except CircuitsError as exc:
            raise check.fail(lines["baseline_tolerance"], str(exc)) from None
        arguments["baseline_tolerance"] = settings["baseline_tolerance"]

    teacher: ModelRef | None
    if "pair" in gate and "model" in gate:
        raise check.fail(gate.lines["model"], f"{what} names both a pair and a model; keep one")
    for own, other in (("pair", "model"), ("model", "pair")):
        if own in gate:
            settings.pop(other, None)  # the gate's own choice beats the defaults' other one
    if "model" in settings:
        if not kind.takes_model:
            raise check.fail(lines["model"], f"{what}: {kind_name} compares a teacher with a "
                                             "student: give pair: NAME instead of model:")
        model_name = settings["model"]
        if model_name not in models:
            raise check.fail(lines["model"], _unknown("model", model_name, models))
        teacher, subject = None, models[model_name]
    elif "pair" in settings:
        if not kind.takes_pair:
            raise check.fail(lines["pair"], f"{what}: {kind_name} checks one model at a time: "
                                            "give model: NAME (declared under models:) instead "
                                            "of pair:")
        pair_name = settings["pair"]
        if pair_name not in pairs:
            raise check.fail(lines["pair"], _unknown("pair", pair_name, pairs))
        teacher, subject = pairs[pair_name]
    else:
        if not kind.takes_pair:
            raise check.fail(line, f"{what} names no model: add model: NAME (declared under "
                                   "models:)")
        raise check.fail(line, f"{what} names no pair: add pair: NAME (declared under pairs:)"
                         + (" or model: NAME" if kind.takes_model else ""))
    if "task" not in settings:
        raise check.fail(line, f"{what} has no task: add task: numerals (a built-in: numerals, "
                               "numwords, ioi) or task: path/to/task.yaml")
    problem = task_problem(settings["task"], (base,), files=False)
    if problem:
        raise check.fail(lines["task"], f"{what}: {problem}")
    return GateSpec(
        name=name,
        kind=kind_name,
        line=line,
        task=settings["task"],
        teacher=teacher,
        subject=subject,
        arguments=arguments,
        n_prompts=settings.get("n_prompts"),
        seed=settings.get("seed"),
        device=settings.get("device"),
        dtype=settings.get("dtype"),
        xfail=settings.get("xfail"),
        marks=settings.get("marks", ()),
    )


def task_problem(task: str, folders: Sequence[Path] = (), *, files: bool = True) -> str:
    """Why ``task`` names no task ("" when it does): a built-in name, or a task file that exists
    as given or under one of ``folders`` (a gate file's own folder). What a gate file and the
    command line refuse before any model loads, with the built-in name it was probably meant to
    be ("IOI": "did you mean 'ioi'?").

    ``files=False`` accepts any path with a task file's suffix, existing or not: a gate file
    is read at collection, and its task file may be written later in the session (a fixture, a
    conftest), so a missing one is left to the gate, which names it when it runs."""
    if task in BUILTIN_TASKS:
        return ""
    path = Path(task)
    if not files and path.suffix.lower() in TASK_FILE_SUFFIXES:
        return ""
    candidates = [path] + ([] if path.is_absolute() else [Path(f) / path for f in folders])
    if any(c.is_file() for c in candidates):
        return ""
    lowered = {name.lower(): name for name in BUILTIN_TASKS}
    hint = (f" (did you mean {lowered[task.lower()]!r}?)" if task.lower() in lowered
            else closest(task, BUILTIN_TASKS))
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    if path.suffix.lower() in TASK_FILE_SUFFIXES:
        return (f"task file {task!r} not found{hint} (looked in: {looked}); give the path of a "
                "task file, relative to the gate file, or a built-in task "
                f"({', '.join(BUILTIN_TASKS)})")
    return (f"task {task!r} is not a built-in task{hint} and no task file of that name exists "
            f"(looked in: {looked}); give a built-in task ({', '.join(BUILTIN_TASKS)}, "
            f"case-sensitive) or the path of a task file ({', '.join(TASK_FILE_SUFFIXES)})")


def _unknown(what: str, name: str, declared: dict[str, Any]) -> str:
    listed = ", ".join(declared) if declared else f"none: declare it under {what}s:"
    return f"unknown {what} {name!r}{closest(name, declared)}; declared {what}s: {listed}"


# ----------------------------------------------------------------------------- pytest nodes


class GateFile(pytest.File):
    """A ``circuits*.yaml`` file: one :class:`GateItem` per gate."""

    def collect(self) -> Iterator[GateItem]:
        try:
            specs = load_gate_file(self.path)
        except GateFileError as exc:
            raise self.CollectError(str(exc)) from None
        for spec in specs:
            yield GateItem.from_parent(self, name=spec.name, spec=spec)


class GateItem(pytest.Item):
    """One gate of a gate file, run through the matching ``assert_*`` function."""

    def __init__(self, *, spec: GateSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        for mark in spec.marks:
            self.add_marker(mark)
        if spec.xfail is not None:

            self.add_marker(pytest.mark.xfail(reason=spec.xfail, strict=True,
                                              raises=CircuitAssertionError))

    def runtest(self) -> None:
        spec = self.spec

        memo = memo_of(self.config)
        device = run_device(self.config, spec.device or resolve(self.config, "device").value)
        dtype = spec.dtype or resolve(self.config, "dtype").value
        n_prompts = spec.n_prompts or resolve(self.config, "n_prompts").value
        seed = spec.seed if spec.seed is not None else resolve(self.config, "seed").value
        subject: Any = memo.model(spec.subject.source, name=spec.subject.name, device=device,
                                  dtype=dtype)
        if spec.teacher is not None:
            teacher = memo.model(spec.teacher.source, name=spec.teacher.name, device=device,
                                 dtype=dtype)
            subject = memo.pair(teacher, subject)
        local = self.path.parent / spec.task  # a task file next to the gate file comes first
        task = memo.task(str(local) if local.is_file() else spec.task, n_prompts=n_prompts,
                         seed=seed, search_paths=(self.path.parent,))
        KINDS[spec.kind].function(subject, task, seed=seed, **spec.arguments)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | Any:
        """The gate's own table (or the error's message), without a Python traceback."""

        # CircuitsError: a threshold out of range, an unknown component, a task that does not
        # fit; ValueError: what the analysis refuses (an unknown matching or direction)
        expected = (CircuitAssertionError, CircuitsError, ValueError)
        if isinstance(excinfo.value, expected) and not self.config.getoption("fulltrace"):
            where = f"{self.path.name}:{self.spec.line}: gate {self.spec.name!r}"
            if isinstance(excinfo.value, CircuitAssertionError):
                return f"{where} failed\n{excinfo.value}"
            return f"{where}: {type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.spec.line - 1, f"{self.spec.kind} gate {self.spec.name}"
