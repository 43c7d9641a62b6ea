"""The gate kinds: one module each (aligned, behavior, mechanism, parity, robust, shift),
collected into KINDS.

A module of this package that defines ``KIND`` (a :class:`GateKind`) is a gate kind: adding one
means adding its module (and its tests, and its section of ``GATES.md``, which a test holds to
the registry); the assertions' public names, YAML gate files, baselines and the terminal summary
find it here. Torch-free: each gate imports the analysis when it runs.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from typing import Any

from .registry import UNIT_SYMBOLS, UNITS, GateKind, Metric, Threshold, read_tolerance

#: Modules of this package that hold shared machinery rather than a gate kind.
_SUPPORT = frozenset({"registry", "runner", "shared"})


def _discover() -> dict[str, GateKind]:
    kinds: dict[str, GateKind] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name in _SUPPORT or module.name.startswith("_"):
            continue
        kind = getattr(import_module(f"{__name__}.{module.name}"), "KIND", None)
        if not isinstance(kind, GateKind):
            raise TypeError(f"{__name__}.{module.name} defines no KIND; a module here is a "
                            "gate kind and must define KIND = GateKind(...)")  # a coding error
        if kind.name in kinds:
            raise TypeError(f"gate kind {kind.name!r} is defined twice")
        kinds[kind.name] = kind
    return kinds


#: Gate name (and YAML key) -> kind, in module-name order.
KINDS: dict[str, GateKind] = _discover()

#: Public assertion name -> function (``assert_circuit_aligned`` -> the function).
GATE_FUNCTIONS: dict[str, Any] = {kind.function_name: kind.function for kind in KINDS.values()}


def kind_of(gate: str) -> GateKind | None:
    """The kind named ``gate`` (a result's ``gate``), None when it is not one of ours."""
    return KINDS.get(gate)


def metric_spec(gate: str, metric: str) -> Metric | None:
    """How ``metric`` of a ``gate`` result is compared: the kind's own metric, or for a gate
    that is not a registered kind, the first kind's metric of that name."""
    kind = KINDS.get(gate)
    if kind is not None:
        return kind.metric(metric)
    return next((m for k in KINDS.values() if (m := k.metric(metric)) is not None), None)


def read_baseline_tolerance(value: Any, what: str, kind: GateKind | None = None
                            ) -> float | dict[str, float] | None:
    """A baseline tolerance (a marker's, a gate file's, an assertion's) validated against
    ``kind``'s metrics, or every kind's when none is given (see ``registry.read_tolerance``)."""
    return read_tolerance(value, what, [kind] if kind is not None else list(KINDS.values()))


__all__ = [
    "GATE_FUNCTIONS",
    "KINDS",
    "UNITS",
    "UNIT_SYMBOLS",
    "GateKind",
    "Metric",
    "Threshold",
    "kind_of",
    "metric_spec",
    "read_baseline_tolerance",
    *GATE_FUNCTIONS,
]

globals().update(GATE_FUNCTIONS)  # ``from pytest_circuits.kinds import assert_circuit_aligned``
