"""The plugin's settings: each a ``--circuits-*`` option, a ``circuits_*`` ini key and (per-test
ones) a ``@pytest.mark.circuits(...)`` keyword, resolved marker > option > ini key > default.

Torch-free: the plugin imports this at load time.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .config.options import (  # noqa: F401 (AUTO_MIN_COMPONENTS re-exported)
    AUTO_MIN_COMPONENTS,
    SWEEP_METHODS,
    closest,
    default_method_rule,
    method_hint,
)
from .dtypes import DTYPES, canonical_dtype
from .errors import GateConfigError
from .kinds import read_baseline_tolerance
from .tasks.builtin import DEFAULT_N_PROMPTS
from .tasks.task import MAX_N_PROMPTS


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
    Setting("n_prompts", f"prompts generated for a built-in task, 1 to {MAX_N_PROMPTS:,}; also "
            f"used by a gate given a task name (default: {DEFAULT_N_PROMPTS})",
            kind="int", default=DEFAULT_N_PROMPTS, per_test=True, metavar="N"),
    Setting("seed", "seed of the built-in task's prompts and of the analyses (default: 0)",
            kind="int", default=0, per_test=True, metavar="N"),
    Setting("method", "sweep algorithm of the gates that ablate components: exact or auto (auto: "
            "screen by attribution, measure exactly whatever could change a verdict) (default: "
            f"{default_method_rule()})",
            per_test=True, metavar="METHOD"),
    Setting("device", "device to load models on: auto, cpu, cuda, cuda:N, or cuda:auto (each "
            "xdist worker on its own GPU: gwN -> cuda:N mod the device count) (default: auto)",
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
    Setting("require_gpu", "the run needs a GPU: fail (instead of skip) tests marked gpu when "
            "CUDA is absent, and fail every gate whose models are on the CPU", kind="bool",
            default=False),
    Setting("threads", "torch intra-op threads per process (default: the usable cores divided "
            "by the xdist workers, at least 1; an OMP_NUM_THREADS in the environment is kept)",
            kind="int", metavar="N"),
    Setting("html", "write a self-contained HTML report of every gate to this file",
            kind="path", metavar="PATH"),
    Setting("ray", "run the exact sweeps' replays on a Ray cluster: its address (HOST:PORT, "
            "ray://HOST:PORT or auto), or local to start Ray on this machine; the RAY_ADDRESS "
            "environment variable counts when this is unset (needs the ray extra) (default: "
            "in this process)", metavar="ADDRESS"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

#: Keyword arguments of ``@pytest.mark.circuits`` besides the per-test settings.
MARKER_EXTRAS = ("baseline_tolerance",)
MARKER_KEYS = tuple(s.name for s in SETTINGS if s.per_test) + MARKER_EXTRAS

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+|:auto)?)$")

#: Whole-number settings and the smallest value each accepts (0 prompts would mean "nothing
#: measured", and a negative seed or thread count is meaningless).
_MINIMUM = {"n_prompts": 1, "seed": 0, "threads": 1}
#: More intra-op threads than this is a typo, not a machine: OpenMP would try to start them all.
MAX_THREADS = 1024


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


def merged_marker_kwargs(node: pytest.Item | pytest.Node) -> dict[str, Any]:
    """The ``circuits`` keyword arguments that apply to ``node``, merged over its markers.

    A module's ``pytestmark``, a class's marker and the function's own marker all count; the
    nearest one wins per key, so ``@pytest.mark.circuits(n_prompts=8)`` on a test keeps the
    module's ``student=``. A key given as None counts as not given. A bad
    ``baseline_tolerance`` is refused here, before the test runs.
    """
    merged: dict[str, Any] = {}
    for marker in node.iter_markers("circuits"):  # nearest first
        for key, value in marker_kwargs(marker).items():
            if value is not None and key not in merged:
                merged[key] = value
    if "baseline_tolerance" in merged:

        try:
            merged["baseline_tolerance"] = read_baseline_tolerance(
                merged["baseline_tolerance"], "@pytest.mark.circuits(baseline_tolerance=...)"
            )
        except GateConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    return merged


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
        least = _MINIMUM.get(setting.name)
        if least is not None and number < least:
            raise pytest.UsageError(
                f"{value.origin}: {setting.name} must be at least {least}, got {number}"
            )
        if setting.name == "threads" and number > MAX_THREADS:
            raise pytest.UsageError(
                f"{value.origin}: threads must be at most {MAX_THREADS} (this machine has "
                f"{os.cpu_count()} cores), got {number:,}"
            )
        if setting.name == "n_prompts" and number > MAX_N_PROMPTS:
            raise pytest.UsageError(
                f"{value.origin}: n_prompts must be at most {MAX_N_PROMPTS:,} (memory grows with "
                f"the prompt count), got {number:,}"
            )
        return number
    if setting.kind == "bool":
        return bool(raw)
    if setting.kind == "path":
        return value.base / Path(os.path.expanduser(str(raw)))
    text = str(raw).strip()
    if setting.name == "device" and not DEVICE_PATTERN.match(text):
        raise pytest.UsageError(
            f"{value.origin}: device {text!r} is not one of auto, cpu, cuda, cuda:N, cuda:auto"
        )
    if setting.name == "method" and text not in SWEEP_METHODS:
        raise pytest.UsageError(
            f"{value.origin}: method {text!r} is not a sweep method{closest(text, SWEEP_METHODS)}; "
            f"use {' or '.join(SWEEP_METHODS)} ({method_hint(text)}), or leave it unset for the "
            f"default ({default_method_rule()})"
        )
    if setting.name == "dtype":
        dtype = canonical_dtype(text)
        if dtype is None:
            raise pytest.UsageError(
                f"{value.origin}: dtype {text!r} is not one of {', '.join(DTYPES)}"
            )
        return dtype  # one spelling, so "bf16" and "bfloat16" share one loaded model
    return text


def ray_address(config: pytest.Config) -> Value | None:
    """Where the sweeps run: ``--circuits-ray`` / ini ``circuits_ray``, else a ``RAY_ADDRESS``
    in the environment; None (the default) runs them in this process and never imports Ray."""
    chosen = resolve(config, "ray")
    if chosen.value is None:
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if not env:
            return None
        chosen = Value(env, "environment variable RAY_ADDRESS", config.rootpath)
    if not chosen.value:
        raise pytest.UsageError(f"{chosen.origin}: the Ray address is empty; write local, auto, "
                                "HOST:PORT or ray://HOST:PORT, or leave it unset")
    return chosen


def model_source(value: Value) -> str:
    """A model source made absolute when it names an existing directory relative to its base."""
    text = str(value.value)
    if text.startswith("zoo:") or Path(text).is_absolute():
        return text
    candidate = value.base / Path(text).expanduser()
    return str(candidate) if candidate.exists() else text


# ----------------------------------------------------------------------------- threads, devices


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_id(config: pytest.Config) -> str | None:
    """This process's xdist worker id ("gw3"), None on the controller or in a serial run."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return str(workerinput.get("workerid", "")) or None
    return os.environ.get("PYTEST_XDIST_WORKER") or None


def worker_count(config: pytest.Config) -> int:
    """How many xdist workers share the machine (1 in a serial run)."""
    workerinput = getattr(config, "workerinput", None)
    raw = (workerinput or {}).get("workercount") or os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    try:
        return max(1, int(raw)) if raw is not None else 1
    except (TypeError, ValueError):
        return 1


def default_threads(cores: int, workers: int) -> int:
    """Intra-op threads per worker: the cores shared out, so workers do not oversubscribe
    them (on a shared 2-core runner torch's own default made sweeps about nine times slower)."""
    return max(1, cores // max(1, workers))


def thread_count(config: pytest.Config) -> tuple[int, str]:
    """torch's intra-op thread count for this process, and where it came from.

    ``--circuits-threads`` / ``circuits_threads`` first; else an ``OMP_NUM_THREADS`` the user
    exported (their deliberate choice), held to the same bound as ``--circuits-threads``
    (:data:`MAX_THREADS`: above it the run is refused, naming the variable, as OpenMP would try
    to start them all and run out of memory); else the cores divided by the xdist workers. An
    ``OMP_NUM_THREADS`` that is not a whole number >= 1 is set aside with a warning.
    """
    chosen = resolve(config, "threads")
    if chosen.value is not None:
        return int(chosen.value), chosen.origin
    exported = exported_threads(config)
    if exported is not None:
        return exported, "OMP_NUM_THREADS"
    cores, workers = usable_cores(), worker_count(config)
    return default_threads(cores, workers), f"{cores} cores / {workers} workers"


def exported_threads(config: pytest.Config | None = None) -> int | None:
    """The thread count ``OMP_NUM_THREADS`` asks for, or None when it is unset or unusable.

    Raises ``pytest.UsageError`` above :data:`MAX_THREADS`; warns (a ``PytestConfigWarning``,
    through ``config`` when given) and returns None when it is not a whole number >= 1.
    """
    raw = os.environ.get("OMP_NUM_THREADS")
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not text.isdigit() or int(text) < 1:
        warning = pytest.PytestConfigWarning(
            f"OMP_NUM_THREADS={raw!r} is not a whole number >= 1, so pytest-circuits ignores "
            "it and uses its default thread count (the usable cores divided by the xdist "
            "workers); export a number such as OMP_NUM_THREADS=4, or pass --circuits-threads=N"
        )
        if config is not None:
            config.issue_config_time_warning(warning, stacklevel=2)
        else:
            import warnings

            warnings.warn(warning, stacklevel=2)
        return None
    number = int(text)
    if number > MAX_THREADS:
        raise pytest.UsageError(
            f"OMP_NUM_THREADS={number:,} in the environment asks for more torch threads than "
            f"the {MAX_THREADS:,} pytest-circuits allows (this machine has {os.cpu_count()} "
            "cores; starting them all runs out of memory): export a smaller number, unset it, "
            "or pass --circuits-threads=N, which takes precedence over it"
        )
    return number


def apply_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads: directly when it is loaded, else through
    ``OMP_NUM_THREADS``, which torch reads when it first loads (so importing the plugin stays
    torch-free)."""
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def spread_device(worker: str | None, device_count: int) -> str:
    """``cuda:auto`` for one process: xdist worker gwN gets cuda:(N mod device_count); a
    serial run gets cuda:0; no device at all gives "cpu"."""
    if device_count < 1:
        return "cpu"
    match = re.fullmatch(r"gw(\d+)", worker or "")
    index = int(match.group(1)) if match else 0
    return f"cuda:{index % device_count}"


def concrete_device(config: pytest.Config, device: str) -> tuple[str, str | None]:
    """``device`` with ``cuda:auto`` replaced by this worker's GPU, and a note when it falls
    back to the CPU. Under ``--circuits-require-gpu`` the fallback is a UsageError instead."""
    if device != "cuda:auto":
        return device, None
    import torch  # only a test that loads a model with cuda:auto gets here

    count = int(torch.cuda.device_count())
    chosen = spread_device(worker_id(config), count)
    if chosen != "cpu":
        return chosen, None
    if resolve(config, "require_gpu").value:
        raise pytest.UsageError(
            "device cuda:auto found no CUDA device (torch.cuda.device_count() is 0) and "
            "--circuits-require-gpu was given: run on a GPU runner, or drop "
            "--circuits-require-gpu to fall back to the CPU"
        )
    return "cpu", ("device cuda:auto found no CUDA device (torch.cuda.device_count() is 0): "
                   "models load on the CPU instead")
