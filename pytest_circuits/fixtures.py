"""The fixtures (``circuit_pair``, ``teacher``, ``student``, ``circuit_task``), their settings
(marker, option, ini key) and the per-process memo that loads each model once.

Nothing heavy is imported here: models and tasks load inside :class:`ModelMemo` methods, which
the fixtures call only when a test asks for them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import CircuitsError

if TYPE_CHECKING:
    from .models import CircuitModel, ModelPair
    from .tasks import Task


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
    Setting("n_prompts", "prompts generated for a built-in task (default: 32)", kind="int",
            default=32, per_test=True, metavar="N"),
    Setting("seed", "seed of the built-in task's prompts and of the analyses (default: 0)",
            kind="int", default=0, per_test=True, metavar="N"),
    Setting("device", "device to load models on: auto, cpu, cuda or cuda:N (default: auto)",
            default="auto", per_test=True, metavar="DEVICE"),
    Setting("dtype", "dtype to load models in: float32, float16 or bfloat16 (default: float32)",
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
_DTYPES = ("float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16")


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
    if setting.name == "dtype" and text.replace("torch.", "").lower() not in _DTYPES:
        raise pytest.UsageError(
            f"{value.origin}: dtype {text!r} is not one of float32, float16, bfloat16"
        )
    return text


def model_source(value: Value) -> str:
    """A model source made absolute when it names an existing directory relative to its base."""
    text = str(value.value)
    if text.startswith("zoo:") or Path(text).is_absolute():
        return text
    candidate = value.base / Path(text).expanduser()
    return str(candidate) if candidate.exists() else text


def missing_model_message(role: str) -> str:
    return (
        f"no {role} model is configured for this test: pass --circuits-{role}=SOURCE, set the ini "
        f"key circuits_{role} (pytest.ini, or [tool.pytest.ini_options] in pyproject.toml), or "
        f"mark the test @pytest.mark.circuits({role}=SOURCE). SOURCE is a hub id, a local "
        "directory or zoo:NAME (for example zoo:tiny-teacher)"
    )


class ModelMemo:
    """Loaded models, pairs and tasks, one of each per process (session or xdist worker).

    Keys are (source, device, dtype) for models; a load that failed is remembered and its
    error raised again, so a broken model does not cost a load per test.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[bool, Any]] = {}

    def _get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key not in self._entries:
            try:
                self._entries[key] = (True, build())
            except Exception as exc:
                self._entries[key] = (False, exc)
        ok, value = self._entries[key]
        if not ok:
            raise value
        return value

    def model(self, source: str, *, device: str, dtype: str, name: str | None = None
              ) -> CircuitModel:
        """``load_model(source)``, once per (source, device, dtype)."""

        def build() -> CircuitModel:
            from .models import load_model

            return load_model(source, device=device, dtype=dtype, name=name or source)

        return self._get(("model", source, name, device, dtype), build)

    def pair(self, teacher: CircuitModel, student: CircuitModel) -> ModelPair:
        """``load_pair(teacher, student)`` over models from :meth:`model`, once per pair."""

        def build() -> ModelPair:
            from .models import load_pair

            return load_pair(teacher, student)

        # The memo holds the models for the whole process, so their ids stay unique.
        return self._get(("pair", id(teacher), id(student)), build)

    def task(self, spec: str, *, n_prompts: int | None, seed: int,
             search_paths: tuple[Path, ...] = ()) -> Task:
        """``resolve_task(spec)``: a built-in name or a task file found under ``search_paths``."""

        def build() -> Task:
            from .tasks import resolve_task

            options: dict[str, Any] = {"seed": seed, "search_paths": search_paths}
            if n_prompts is not None:
                options["n_prompts"] = n_prompts
            return resolve_task(spec, **options)

        return self._get(("task", spec, n_prompts, seed, search_paths), build)


MEMO_KEY = pytest.StashKey[ModelMemo]()


def memo_of(config: pytest.Config) -> ModelMemo:
    """This process's memo (created on first use)."""
    if MEMO_KEY not in config.stash:
        config.stash[MEMO_KEY] = ModelMemo()
    return config.stash[MEMO_KEY]


# ----------------------------------------------------------------------------- fixtures


def _setting(request: pytest.FixtureRequest, name: str) -> Value:
    """A setting for this test (its ``circuits`` marker first); a bad value fails the test."""
    try:
        marker = marker_kwargs(request.node.get_closest_marker("circuits"))
        return resolve(request.config, name, marker, Path(request.path).parent)
    except pytest.UsageError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _load_model(request: pytest.FixtureRequest, role: str) -> CircuitModel:
    source = _setting(request, role)
    if source.value is None:
        pytest.fail(missing_model_message(role), pytrace=False)
    try:
        return memo_of(request.config).model(
            model_source(source), name=str(source.value),
            device=_setting(request, "device").value, dtype=_setting(request, "dtype").value,
        )
    except CircuitsError as exc:
        problem = f"{role} {source.value!r} (from {source.origin}): {exc}"
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def teacher(request: pytest.FixtureRequest) -> CircuitModel:
    """The teacher model (``--circuits-teacher``), loaded once per process."""
    return _load_model(request, "teacher")


@pytest.fixture
def student(request: pytest.FixtureRequest) -> CircuitModel:
    """The student model (``--circuits-student``), loaded once per process."""
    return _load_model(request, "student")


@pytest.fixture
def circuit_pair(request: pytest.FixtureRequest, teacher: CircuitModel,
                 student: CircuitModel) -> ModelPair:
    """The teacher and student as a checked ``ModelPair``, built once per process."""
    try:
        return memo_of(request.config).pair(teacher, student)
    except CircuitsError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def circuit_task(request: pytest.FixtureRequest) -> Task:
    """The task (``--circuits-task``, default ``numerals``) as a ``Task``."""
    from .tasks import TaskError

    spec = _setting(request, "task")
    try:
        return memo_of(request.config).task(
            str(spec.value),
            n_prompts=_setting(request, "n_prompts").value,
            seed=_setting(request, "seed").value,
            search_paths=(spec.base, request.config.rootpath),
        )
    except TaskError as exc:
        problem = f"task from {spec.origin}: {exc}"
    pytest.fail(problem, pytrace=False)
