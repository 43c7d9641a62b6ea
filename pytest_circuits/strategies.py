"""Hypothesis strategies for the built-in tasks and their distribution shifts.

Each strategy draws a one-prompt :class:`~pytest_circuits.tasks.Task` (a prompt, its correct
answer and distractor, and a corrupted prompt of the same shape) from a built-in task under a
shift: ``"members"`` (list members never seen in lists), ``"template"`` (other templates),
``"numbers"`` (numbers above the usual range), ``"longer"``/``"shorter"`` lists, ``"filler"``
(an inserted clause), ``"order"`` (lists counting down), and for IOI ``"names"``/``"objects"``
never seen in IOI; ``"none"`` is the built-in distribution. Given a tokenizer, every draw keeps
its answers single tokens and its clean and corrupted prompts equal in length for it, so a
draw encodes as the gates encode (``encode_task``). Failures shrink towards the first words of
each pool, the smallest numbers and the shortest lists. There is one strategy function per
built-in task, named after it (``numerals``, ``numwords``, ``ioi``), made from the task's own
declaration (its module in ``pytest_circuits/tasks/builtin/`` says how an example is drawn), so a
new built-in task gets its strategy without a change here.

Use them in your own tests; comparing with the teacher keeps a shift that defeats both models
(the zoo's models all fail on lists of seven) from failing the student::

    from hypothesis import given, settings
    from pytest_circuits import strategies
    from pytest_circuits.analysis import task_performance
    from pytest_circuits.models import load_model

    teacher = load_model("zoo:tiny-teacher")
    student = load_model("zoo:tiny-student")

    @settings(max_examples=50, deadline=None)
    @given(strategies.numerals(student.tokenizer, shift="longer"))
    def test_student_continues_longer_lists_where_the_teacher_does(task):
        if task_performance(teacher, task).mean_logit_diff > 0:
            assert task_performance(student, task).mean_logit_diff > 0, task.prompts[0]

``shifted_task(name, shift, n_prompts, seed, tokenizer=...)`` draws a whole task of one shape
from a seed instead (what ``assert_shift_robust`` measures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from .tasks.builtin import BUILTINS, BuiltinTask
from .tasks.fit import fits
from .tasks.shifts import SHIFTS, Chooser, T, draw_example, example_task, shift_pools, shifted_task


class _DrawChooser(Chooser):
    """Choices drawn by Hypothesis, so they shrink (towards the first option, the low end)."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw

    def choice(self, options: Any) -> Any:
        return self.draw(st.sampled_from(list(options)))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def sample(self, options: Any, k: int) -> list[T]:
        items = list(options)
        picks = st.lists(st.integers(0, len(items) - 1), min_size=k, max_size=k, unique=True)
        return [items[i] for i in self.draw(picks)]


def shifted_prompts(
    name: str, shift: str = "none", tokenizer: Any = None, *, kind: str | None = None
) -> st.SearchStrategy[Any]:
    """One-prompt tasks of built-in ``name`` under ``shift`` (see the module docstring).

    The pools are fitted to ``tokenizer`` once, when the strategy is built, so an impossible
    shift fails at once with a :class:`~pytest_circuits.tasks.TaskValidationError` naming why.
    """
    pools = shift_pools(name, shift, tokenizer, kind)
    mode = "masked" if pools.spec.mask is not None else "causal"

    @st.composite
    def draw_task(draw: Any) -> Any:
        return example_task(pools, [draw_example(pools, _DrawChooser(draw))])

    strategy = draw_task()
    if tokenizer is None:
        return strategy
    # The pools already keep lengths equal; this catches what per-word counts cannot see (a
    # merge across a word boundary), and rarely rejects a draw.
    return strategy.filter(lambda task: fits(task, tokenizer, mode))


def _strategy(task: BuiltinTask) -> Callable[..., Any]:
    """The public strategy of built-in ``task``: ``numerals(tokenizer, shift=..., kind=...)``."""

    def strategy(tokenizer: Any = None, *, shift: str = "none", kind: str | None = None) -> Any:
        return shifted_prompts(task.name, shift, tokenizer, kind=kind)

    strategy.__name__ = strategy.__qualname__ = task.strategy_name
    strategy.__doc__ = task.strategy_doc
    return strategy


#: Strategy name -> function, one per built-in task (``numerals``, ``numwords``, ``ioi``).
STRATEGIES: dict[str, Callable[..., Any]] = {
    task.strategy_name: _strategy(task) for task in BUILTINS.values()
}

__all__ = ["SHIFTS", "shifted_prompts", "shifted_task", *STRATEGIES]

globals().update(STRATEGIES)  # ``from pytest_circuits.strategies import numerals``
