"""Tests of the built-in task registry: each built-in task is one module of tasks/builtin/ that
declares its prompts, fitting, shifts and drawing, and every caller goes through it."""

from __future__ import annotations

import ast
import dataclasses
import pkgutil
import random
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from helpers import bpe_tokenizer, word_tokenizer
from hypothesis import find, settings
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import pytest_circuits.tasks as tasks_package
from pytest_circuits import strategies
from pytest_circuits.tasks import BUILTIN_TASKS, TaskAdaptation, builtin_task
from pytest_circuits.tasks import builtin as builtin_package
from pytest_circuits.tasks.builtin import BUILTINS, fit_builtin
from pytest_circuits.tasks.registry import SHARED_SHIFT_MEANINGS, BuiltinTask, ShiftPools
from pytest_circuits.tasks.shifts import SHIFTS, RandomChooser, shift_pools, shifted_task
from pytest_circuits.zoo import zoo_path

TASKS_DIR = Path(tasks_package.__file__).parent


@pytest.fixture(scope="module")
def zoo() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(zoo_path("tiny-teacher"))


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return bpe_tokenizer()


def _task_modules() -> dict[str, Any]:
    return {
        module.name: import_module(f"{builtin_package.__name__}.{module.name}")
        for module in pkgutil.iter_modules(builtin_package.__path__)
    }


def test_the_registry_lists_the_built_in_tasks_in_their_order() -> None:
    assert BUILTIN_TASKS == ("numerals", "numwords", "ioi")
    assert tuple(BUILTINS) == BUILTIN_TASKS
    assert all(BUILTINS[name].name == name for name in BUILTIN_TASKS)
    assert [BUILTINS[name].order for name in BUILTIN_TASKS] == [10, 20, 30]


def test_every_built_in_task_comes_from_one_module_of_the_package() -> None:
    declared = {name: [t.name for t in module.TASKS] for name, module in _task_modules().items()}
    assert declared == {"ioi": ["ioi"], "lists": ["numerals", "numwords"]}
    for module in _task_modules().values():
        for task in module.TASKS:
            assert BUILTINS[task.name] is task


@pytest.mark.parametrize("name", BUILTIN_TASKS)
@pytest.mark.parametrize(("n_prompts", "seed"), [(1, 0), (9, 4)])
def test_building_through_the_registry_is_builtin_task(name: str, n_prompts: int,
                                                       seed: int) -> None:
    task = BUILTINS[name]
    built = task.build(n_prompts, seed, n_prompts, task.paper(None))
    assert built == builtin_task(name, n_prompts, seed)
    assert built.fingerprint() == builtin_task(name, n_prompts, seed).fingerprint()
    assert len(built) == n_prompts and built.name == name


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_the_paper_words_fit_the_zoo_as_they_are(name: str, zoo: Any) -> None:
    fitted = BUILTINS[name].fit(zoo, "causal", None)
    assert fitted.spec == BUILTINS[name].paper(None)
    assert fitted.changes == () and fitted.dropped == ()
    assert fit_builtin(name, zoo, "causal") == (fitted.spec, None)


@pytest.mark.parametrize("name", ["numerals", "numwords"])
def test_a_fitted_task_is_builtin_task_with_its_adaptation(name: str, bpe: Any) -> None:
    task = BUILTINS[name]
    fitted = task.fit(bpe, "causal", None)
    # this BPE splits " 5" (not " five") and 11 list members at the start of a prompt
    assert fitted.changes[-1].startswith("list members: 19 of 30 kept")
    assert fitted.spec.answer_space is (name == "numwords")
    built = task.build(12, 3, 12, fitted.spec)
    adaptation = TaskAdaptation(bpe.name_or_path or type(bpe).__name__, "causal",
                                fitted.changes, fitted.dropped)
    assert dataclasses.replace(built, adaptation=adaptation) == builtin_task(
        name, 12, 3, tokenizer=bpe)


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_a_masked_variant_names_the_words_before_its_mask(name: str) -> None:
    change = (f"masked variant: prompts end '{BUILTINS[name].before_mask} [MASK].' and are "
              "read at the mask")
    fitted = builtin_task(name, 4, 0, tokenizer=word_tokenizer(style="bert"))
    unfitted = builtin_task(name, 4, 0, kind="masked")
    for task in (fitted, unfitted):
        assert all(p.endswith(" [MASK].") for p in task.prompts)
        assert task.adaptation is not None and task.adaptation.changes == (change,)


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_the_shifts_are_the_tasks_own(name: str) -> None:
    task = BUILTINS[name]
    assert SHIFTS[name] == tuple(task.shifts) and SHIFTS[name][0] == "none"
    for shift, meaning in task.shifts.items():
        assert shifted_task(name, shift, 2).description == f"{name} shifted: {meaning}."
    assert len(SHIFTS["numerals"]) == 8 and len(SHIFTS["ioi"]) == 5


@pytest.mark.parametrize(("name", "shift"),
                         [(n, s) for n in BUILTIN_TASKS for s in SHIFTS[n] if s != "numbers"])
def test_a_shifted_task_is_drawn_by_the_tasks_own_pools_and_draw(name: str, shift: str,
                                                                 zoo: Any) -> None:
    task = BUILTINS[name]
    spec, _ = fit_builtin(name, zoo, "causal")
    pools = task.pools(shift, spec, zoo, "causal")
    assert isinstance(pools, ShiftPools) and pools == shift_pools(name, shift, zoo)
    shifted = shifted_task(name, shift, 3, seed=7, tokenizer=zoo)
    for i in range(3):
        rng = random.Random(f"pytest-circuits/shift/{name}/{shift}/7/{i}")
        example = task.draw(pools, RandomChooser(rng), True)
        assert (example.prompt, example.correct, example.distractor, example.corrupted) == (
            shifted.prompts[i], shifted.correct[i], shifted.distractors[i], shifted.corrupted[i])


class _FirstChooser:
    """The choices Hypothesis shrinks to: the first options and the lowest numbers."""

    def choice(self, options: Any) -> Any:
        return list(options)[0]

    def integer(self, low: int, high: int) -> int:
        return low

    def sample(self, options: Any, k: int) -> list[Any]:
        return list(options)[:k]


@pytest.mark.parametrize(("name", "shift"), [("numerals", "longer"), ("numwords", "none"),
                                             ("ioi", "template"), ("ioi", "filler")])
def test_each_task_has_a_strategy_drawing_with_its_draw(name: str, shift: str) -> None:
    task = BUILTINS[name]
    strategy_function = getattr(strategies, task.strategy_name)
    assert strategy_function is strategies.STRATEGIES[task.strategy_name]
    assert strategy_function.__doc__ == task.strategy_doc and name in strategies.__all__
    smallest = find(strategy_function(shift=shift), lambda drawn: True,
                    settings=settings(database=None, derandomize=True))
    example = task.draw(shift_pools(name, shift), _FirstChooser(), False)
    assert (smallest.prompts[0], smallest.correct[0], smallest.distractors[0]) == (
        example.prompt, example.correct, example.distractor)


def _declaration(**changes: Any) -> BuiltinTask:
    return dataclasses.replace(BUILTINS["ioi"], **changes)


def test_a_declaration_must_start_with_no_shift_and_keep_shared_meanings() -> None:
    with pytest.raises(TypeError, match="first shift must be 'none'"):
        _declaration(shifts={"names": "IOI names never seen in IOI"})
    with pytest.raises(TypeError, match="shift 'template' must mean"):
        _declaration(shifts={"none": SHARED_SHIFT_MEANINGS["none"], "template": "other words"})
    assert _declaration(name="ioi-copy").strategy_name == "ioi_copy"


def _imports(path: Path, package: str) -> list[tuple[str, str]]:
    """(module, imported name) for every ``from X import name`` of one file, X resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found += [(module, alias.name) for alias in node.names]
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(TASKS_DIR.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _task_module_imports() -> dict[str, set[str]]:
    """Module of pytest_circuits.tasks -> the modules of it that it imports from."""
    paths = {_module_name(path): path for path in sorted(TASKS_DIR.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = set()
        for module, imported in _imports(path, package):
            assert not imported.startswith("_"), f"{name} imports {module}.{imported}"
            if f"{module}.{imported}" in paths:  # from .builtin import ioi
                graph[name].add(f"{module}.{imported}")
            elif module in paths:
                graph[name].add(module)
    return graph


def test_task_modules_import_no_private_name_and_form_no_cycle() -> None:
    graph = _task_module_imports()
    assert "pytest_circuits.tasks.builtin.ioi" in graph
    lower = ("fit", "registry", "words", "task", "encode")
    for module in lower:  # the shared modules know nothing of the built-in tasks
        assert not any(target.startswith("pytest_circuits.tasks.builtin")
                       for target in graph[f"pytest_circuits.tasks.{module}"]), module
    for module in ("ioi", "lists"):  # nor does one task module import another
        targets = graph[f"pytest_circuits.tasks.builtin.{module}"]
        assert not any(t.startswith("pytest_circuits.tasks.builtin") for t in targets), targets

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        for target in graph.get(node, ()):
            visit(target, (*path, node))

    for module in graph:
        visit(module, ())
