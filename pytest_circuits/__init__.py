"""pytest-circuits: gate a distilled model's release on how it computes, from pytest.

Importing this package is cheap: torch, transformers and TransformerLens load only when a name
that needs them is first used (``pytest_circuits.load_pair``, ``assert_circuit_aligned``...).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any


def _gate_functions() -> list[str]:
    from .kinds import GATE_FUNCTIONS

    return list(GATE_FUNCTIONS)

__version__ = "0.1.0"

_LAZY = {
    "load_model": "pytest_circuits.models",
    "load_pair": "pytest_circuits.models",
    "CircuitModel": "pytest_circuits.models",
    "ModelPair": "pytest_circuits.models",
    "Task": "pytest_circuits.tasks",
    "builtin_task": "pytest_circuits.tasks",
    "load_task_file": "pytest_circuits.tasks",
    "sweep": "pytest_circuits.analysis",
    "compare": "pytest_circuits.analysis",
    "logit_diff": "pytest_circuits.analysis",
    "task_performance": "pytest_circuits.analysis",
    "SweepResult": "pytest_circuits.analysis",
    "PairReport": "pytest_circuits.analysis",
    "head_roles": "pytest_circuits.analysis.roles",
    "compare_roles": "pytest_circuits.results.roles",
    "RoleResult": "pytest_circuits.results.roles",
    "RoleComparison": "pytest_circuits.results.roles",
    "CircuitAssertionError": "pytest_circuits.errors",
    "InvalidTaskError": "pytest_circuits.errors",
    "ModelLoadError": "pytest_circuits.errors",
    "IncompatiblePairError": "pytest_circuits.errors",
    "UnsupportedArchitectureError": "pytest_circuits.errors",
    "CircuitsError": "pytest_circuits.errors",
    "GateConfigError": "pytest_circuits.errors",
    "BridgeParityError": "pytest_circuits.parity",
    "ParityResult": "pytest_circuits.parity",
    "bridge_parity": "pytest_circuits.parity",
}
# Every gate kind's assert_* function (the registry itself imports nothing heavy).
_LAZY.update({name: "pytest_circuits.kinds" for name in _gate_functions()})

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_circuits' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
