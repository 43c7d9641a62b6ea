"""The plugin's settings: each a ``--circuits-*`` option, a ``circuits_*`` ini key and (per-test
ones) a ``@pytest.mark.circuits(...)`` keyword, resolved marker > option > ini key > default.

Torch-free: the plugin imports this at load time.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .dtypes import DTYPES, canonical_dtype
from .tasks.builtin import DEFAULT_N_PROMPTS


@dataclass(frozen=True)
class Setting:
    """One configuration value: a ``--circuits-*`` option mirrored by a ``circuits_*`` ini key."""

    name: str
    help: str
    kind: str = "string"  # "string" | "int" | "bool" | "path"
    default: Any = None
    per_test: bool = False  # also accepted by @pytest.mark.circuits(name=...)
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--circuits-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "circuits_" + self.name


SETTINGS: tuple[Setting, ...] = (
    Setting("teacher", "teacher model: hub id, local directory or zoo:NAME", per_test=True,
            metavar="SOURCE"),
    Setting("student", "student model: hub id, local directory or zoo:NAME", per_test=True,
            metavar="SOURCE"),
    Setting("task", "task for circuit_task: a built-in name or a task file (default: numerals)",
            default="numerals", per_test=True, metavar="TASK"),
    Setting("n_prompts", f"prompts generated for a built-in task (default: {DEFAULT_N_PROMPTS})",
            kind="int", default=DEFAULT_N_PROMPTS, per_test=True, metavar="N"),
    Setting("seed", "seed of the built-in task's prompts and of the analyses (default: 0)",
            kind="int", default=0, per_test=True, metavar="N"),
    Setting("device", "device to load models on: auto, cpu, cuda or cuda:N (default: auto)",
            default="auto", per_test=True, metavar="DEVICE"),
    Setting("dtype", f"dtype to load models in: {', '.join(DTYPES)} (default: float32)",
            default="float32", per_test=True, metavar="DTYPE"),
    Setting("cache_dir", "directory of the on-disk analysis cache (default: "
            ".pytest_cache/d/circuits)", kind="path", metavar="DIR"),
    Setting("no_cache", "do not reuse or store analysis results between runs", kind="bool",
            default=False),
    Setting("json", "write every gate result to this JSON file", kind="path", metavar="PATH"),
    Setting("baseline", "compare gate results with this baseline file", kind="path",
            metavar="PATH"),
    Setting("update_baseline", "write this run's results into the --circuits-baseline file "
            "instead of comparing", kind="bool", default=False),
    Setting("require_gpu", "fail (instead of skip) tests marked gpu when CUDA is absent",
            kind="bool", default=False),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

#: Keyword arguments of ``@pytest.mark.circuits`` besides the per-test settings.
MARKER_EXTRAS = ("baseline_tolerance",)
MARKER_KEYS = tuple(s.name for s in SETTINGS if s.per_test) + MARKER_EXTRAS

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def closest(word: str, choices: Any) -> str:
    """' (did you mean 'x'?)' for the nearest of ``choices``, or '' when nothing is close."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def add_options(parser: pytest.Parser) -> None:
    """Register every setting as a command-line option and an ini key."""
    group = parser.getgroup("circuits", "circuit gates (pytest-circuits)")
    for setting in SETTINGS:
        if setting.kind == "bool":
            group.addoption(setting.flag, action="store_true", default=None, dest=setting.ini,
                            help=setting.help)
            parser.addini(setting.ini, setting.help, type="bool", default=None)
        else:
            group.addoption(setting.flag, default=None, dest=setting.ini,
                            metavar=setting.metavar, help=setting.help)
            parser.addini(setting.ini, setting.help, type="string", default=None)


@dataclass(frozen=True)
class Value:
    """A resolved setting with where it came from (for error messages and relative paths)."""

    value: Any
    origin: str  # "--circuits-teacher", "ini circuits_teacher", "@pytest.mark.circuits(...)"
    base: Path  # directory that a relative path in ``value`` is relative to


def marker_kwargs(marker: pytest.Mark | None) -> dict[str, Any]:
    """The keyword arguments of a ``circuits`` marker, checked against the known keys."""
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError(
            f"@pytest.mark.circuits takes keyword arguments only ({', '.join(MARKER_KEYS)}); "
            f"got positional {marker.args!r}"
        )
    for key in marker.kwargs:
        if key not in MARKER_KEYS:
            raise pytest.UsageError(
                f"@pytest.mark.circuits got an unknown argument {key!r}{closest(key, MARKER_KEYS)}"
                f"; it accepts {', '.join(MARKER_KEYS)}"
            )
    return dict(marker.kwargs)


def resolve(
    config: pytest.Config, name: str, marker: dict[str, Any] | None = None,
    test_dir: Path | None = None,
) -> Value:
    """A setting's value: marker beats command-line option beats ini key beats default."""
    setting = SETTINGS_BY_NAME[name]
    root = config.rootpath
    if setting.per_test and marker and marker.get(name) is not None:
        value = Value(marker[name], f"@pytest.mark.circuits({name}=...)", test_dir or root)
    elif config.getoption(setting.ini, None) is not None:
        value = Value(config.getoption(setting.ini), setting.flag, config.invocation_params.dir)
    elif config.getini(setting.ini) not in (None, ""):
        base = config.inipath.parent if config.inipath is not None else root
        value = Value(config.getini(setting.ini), f"ini key {setting.ini}", base)
    else:
        return Value(setting.default, "default", root)
    return Value(_convert(setting, value), value.origin, value.base)


def _convert(setting: Setting, value: Value) -> Any:
    raw = value.value
    if setting.kind == "int":
        try:
            number = int(str(raw).strip()) if not isinstance(raw, bool) else None
        except ValueError:
            number = None
        if number is None:
            raise pytest.UsageError(f"{value.origin}: {raw!r} is not a whole number")
        if setting.name == "n_prompts" and number < 1:
            raise pytest.UsageError(f"{value.origin}: n_prompts must be at least 1, got {number}")
        return number
    if setting.kind == "bool":
        return bool(raw)
    if setting.kind == "path":
        return value.base / Path(os.path.expanduser(str(raw)))
    text = str(raw).strip()
    if setting.name == "device" and not _DEVICE.match(text):
        raise pytest.UsageError(
            f"{value.origin}: device {text!r} is not one of auto, cpu, cuda, cuda:N"
        )
    if setting.name == "dtype":
        dtype = canonical_dtype(text)
        if dtype is None:
            raise pytest.UsageError(
                f"{value.origin}: dtype {text!r} is not one of {', '.join(DTYPES)}"
            )
        return dtype  # one spelling, so "bf16" and "bfloat16" share one loaded model
    return text


def model_source(value: Value) -> str:
    """A model source made absolute when it names an existing directory relative to its base."""
    text = str(value.value)
    if text.startswith("zoo:") or Path(text).is_absolute():
        return text
    candidate = value.base / Path(text).expanduser()
    return str(candidate) if candidate.exists() else text
