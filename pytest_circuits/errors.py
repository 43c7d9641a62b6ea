"""Exception types shared by every layer of pytest-circuits, each carrying an actionable message."""

from __future__ import annotations


class CircuitsError(Exception):
    """Base class for errors raised by pytest-circuits (other than failed assertions)."""


class ModelLoadError(CircuitsError, OSError):
    """A model or tokenizer could not be found or read."""


class UnsupportedArchitectureError(CircuitsError, ValueError):
    """The model's architecture has no ablation support in pytest-circuits."""


class IncompatiblePairError(CircuitsError, ValueError):
    """Teacher and student cannot be compared the way that was asked."""


class InvalidTaskError(CircuitsError, ValueError):
    """A model does not perform the task, so ablation percentages would be meaningless."""


class ComponentError(CircuitsError, ValueError):
    """A component name is malformed or does not exist in the model."""


class CircuitAssertionError(AssertionError):
    """A circuit gate failed; the message is a table of measured values and thresholds."""


class NonFiniteError(CircuitsError, ValueError):
    """A model has a NaN or infinite weight, or produces non-finite logits: no gate can pass."""


class GateConfigError(CircuitsError, ValueError):
    """A gate (or an analysis) was called with an argument it cannot use: a threshold or option
    out of range, no threshold at all, an unknown teacher component, or a pair-only check on a
    single model."""


class SweepConfigError(CircuitsError, ValueError):
    """``sweep`` was called with an argument it cannot use (unknown method or ablation, a
    threshold that is not a finite number, a stack size below one)."""
