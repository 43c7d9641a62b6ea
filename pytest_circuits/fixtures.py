"""The fixtures (``circuit_pair``, ``teacher``, ``student``, ``circuit_task``) and the
per-process memo that loads each model, pair and task once. Their settings live in
:mod:`pytest_circuits.settings`.

Nothing heavy is imported here: models and tasks load inside :class:`ModelMemo` methods, which
the fixtures call only when a test asks for them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import CircuitsError
from .models import canonical_source, load_model, load_pair
from .settings import (
    Value,
    apply_threads,
    concrete_device,
    merged_marker_kwargs,
    model_source,
    resolve,
)
from .tasks import BUILTIN_TASKS, TaskError, resolve_task

if TYPE_CHECKING:
    from .models import CircuitModel, ModelPair
    from .tasks import Task


def missing_model_message(role: str) -> str:
    return (
        f"no {role} model is configured for this test: pass --circuits-{role}=SOURCE, set the ini "
        f"key circuits_{role} (pytest.ini, or [tool.pytest.ini_options] in pyproject.toml), or "
        f"mark the test @pytest.mark.circuits({role}=SOURCE). SOURCE is a hub id, a local "
        "directory or zoo:NAME (for example zoo:tiny-teacher)"
    )


class ModelMemo:
    """Loaded models, pairs and tasks, one of each per process (session or xdist worker).

    Models are keyed by (canonical source, device, dtype): a local path by its real path, so
    ``./m.gguf`` (an option), ``m.gguf`` (an ini key) and ``../releases/m.gguf`` (a marker) load
    the file once; a hub id or zoo name as written. A load that failed is remembered and its
    error raised again, so a broken model does not cost a load per test.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[bool, Any]] = {}
        self.threads: int | None = None  # torch's intra-op threads, set before a model loads

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
        """``load_model(source)``, once per (canonical source, device, dtype).

        The model carries ``name`` (default: the source as given), the name results and
        baseline keys use. Another name for a model already loaded is a copy of it under that
        name (the same weights, bridge and tokenizer; its own per-model memo, whose entries
        may name it), so it costs no load, and its analyses come from the content-keyed cache.
        """
        label = name or source
        where = canonical_source(source)

        def build() -> CircuitModel:

            if self.threads is not None:  # torch is loaded now: make sure it took the count
                apply_threads(self.threads)
            return load_model(source, device=device, dtype=dtype, name=label)

        loaded: CircuitModel = self._get(("model", where, device, dtype), build)
        if loaded.name == label:
            return loaded
        return self._get(("model", where, device, dtype, label),
                         lambda: _renamed(loaded, label))

    def pair(self, teacher: CircuitModel, student: CircuitModel) -> ModelPair:
        """``load_pair(teacher, student)`` over models from :meth:`model`, once per pair."""

        def build() -> ModelPair:

            return load_pair(teacher, student)

        # The memo holds the models for the whole process, so their ids stay unique.
        return self._get(("pair", id(teacher), id(student)), build)

    def task(self, spec: str, *, n_prompts: int | None, seed: int,
             search_paths: tuple[Path, ...] = (), model: CircuitModel | None = None) -> Task:
        """``resolve_task(spec)``: a built-in name or a task file found under ``search_paths``.

        A built-in is built for ``model``'s tokenizer and kind (a BERT teacher gets the masked
        variant), so the fixture hands a gate the same task the gate would build from the name.
        """

        def build() -> Task:

            options: dict[str, Any] = {"seed": seed, "search_paths": search_paths}
            if n_prompts is not None:
                options["n_prompts"] = n_prompts
            if model is not None:
                options.update(tokenizer=model.tokenizer, kind=model.kind)
            return resolve_task(spec, **options)

        # The memo holds the models for the whole process, so their ids stay unique.
        key = ("task", spec, n_prompts, seed, search_paths, None if model is None else id(model))
        return self._get(key, build)


def _renamed(model: CircuitModel, name: str) -> CircuitModel:
    """``model`` under another name: a shallow copy (``CircuitModel.__copy__`` gives it an empty
    per-model memo), sharing the bridge, weights and tokenizer."""
    clone = copy.copy(model)
    clone.name = name
    return clone


MEMO_KEY = pytest.StashKey[ModelMemo]()


def memo_of(config: pytest.Config) -> ModelMemo:
    """This process's memo (created on first use)."""
    if MEMO_KEY not in config.stash:
        config.stash[MEMO_KEY] = ModelMemo()
    return config.stash[MEMO_KEY]


# ----------------------------------------------------------------------------- fixtures


def _setting(request: pytest.FixtureRequest, name: str) -> Value:
    """A setting for this test (its ``circuits`` markers first: function, class, module);
    a bad value fails the test."""
    try:
        marker = merged_marker_kwargs(request.node)
        return resolve(request.config, name, marker, Path(request.path).parent)
    except pytest.UsageError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


_NOTES: set[str] = set()  # notes already given in this process


def run_device(config: pytest.Config, device: str) -> str:
    """The device a model of this process loads on: ``cuda:auto`` spread over the GPUs, and
    under ``--circuits-require-gpu`` no CPU at all (a failed test, before the model loads)."""
    try:
        device, note = concrete_device(config, device)
    except pytest.UsageError as exc:
        problem = str(exc)
        pytest.fail(problem, pytrace=False)
    if note and note not in _NOTES:
        _NOTES.add(note)
        warnings.warn(pytest.PytestWarning(note), stacklevel=2)
    if resolve(config, "require_gpu").value:
        on_cpu = device == "cpu"
        if device == "auto":
            import torch

            on_cpu = not torch.cuda.is_available()
        if on_cpu:
            pytest.fail(
                f"--circuits-require-gpu was given but models would load on the CPU (device "
                f"{device!r}, CUDA available: no): run on a GPU runner, or drop "
                "--circuits-require-gpu",
                pytrace=False,
            )
    return device


def _load_model(request: pytest.FixtureRequest, role: str) -> CircuitModel:
    source = _setting(request, role)
    if source.value is None:
        pytest.fail(missing_model_message(role), pytrace=False)
    device = run_device(request.config, _setting(request, "device").value)
    try:
        return memo_of(request.config).model(
            model_source(source), name=str(source.value),
            device=device, dtype=_setting(request, "dtype").value,
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

    spec = _setting(request, "task")
    # A built-in is built for the teacher's tokenizer and kind when a teacher is configured
    # (the teacher is loaded anyway by any gate that uses this task); without one it is the
    # paper's GPT-2 task, as before.
    model = None
    if str(spec.value) in BUILTIN_TASKS and _setting(request, "teacher").value is not None:
        model = request.getfixturevalue("teacher")
    try:
        return memo_of(request.config).task(
            str(spec.value),
            n_prompts=_setting(request, "n_prompts").value,
            seed=_setting(request, "seed").value,
            search_paths=(spec.base, request.config.rootpath),
            model=model,
        )
    except TaskError as exc:
        problem = f"task from {spec.origin}: {exc}"
    pytest.fail(problem, pytrace=False)
