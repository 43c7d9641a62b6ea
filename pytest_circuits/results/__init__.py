"""Typed, torch-free results: gate results, model and pair reports, sweeps, fingerprints, head
roles.

Each type turns into plain JSON data with ``to_dict`` and back with ``from_dict``; results files,
baselines, the analysis cache and the reports read them from here without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Name -> the submodule defining it. Loaded on first use: the gate results (``gate``) are
#: read at plugin load, the reports and sweeps (which need numpy) only when a result holds one.
_LAZY = {
    "CircuitsReport": "circuit_report",
    "is_circuits_data": "circuit_report",
    "read_report": "circuit_report",
    "CircuitEdge": "circuit",
    "CircuitResult": "circuit",
    "StabilityPoint": "circuit",
    "DEFAULT_DIRECTION": "fingerprint",
    "METHOD_FIELDS": "fingerprint",
    "MethodFingerprint": "fingerprint",
    "library_versions": "fingerprint",
    "SWEEP_METHOD_KEY": "gate",
    "TASK_ADAPTATION_KEY": "gate",
    "Blame": "gate",
    "GateResult": "gate",
    "MetricCheck": "gate",
    "RoleSweep": "gate",
    "SweepMethodRecord": "gate",
    "as_model_info": "gate",
    "report_from_data": "gate",
    "DEFAULT_INFLUENTIAL": "reports",
    "DEFAULT_MIN_STUDENT_INFLUENCE": "reports",
    "DEFAULT_WEAK_SIMILARITY": "reports",
    "Alignment": "reports",
    "AmbiguousGroup": "reports",
    "CompareSettings": "reports",
    "Discarded": "reports",
    "MatchedPair": "reports",
    "ModelReport": "reports",
    "PairReport": "reports",
    "ReportFormatError": "reports",
    "report_from_dict": "reports",
    "DEFAULT_MARGIN": "sweep",
    "ComponentEffect": "sweep",
    "GateThresholds": "sweep",
    "Screening": "sweep",
    "SweepConfigError": "sweep",
    "SweepResult": "sweep",
    "TaskPerformance": "sweep",
    "ROLES": "roles",
    "ROLE_SPECS": "roles",
    "KeptRole": "roles",
    "MergedHead": "roles",
    "RoleComparison": "roles",
    "RoleResult": "roles",
    "RoleSpec": "roles",
    "compare_roles": "roles",
}

__all__ = [
    "ROLES",
    "ROLE_SPECS",
    "KeptRole",
    "MergedHead",
    "RoleComparison",
    "RoleResult",
    "RoleSpec",
    "compare_roles",
    "DEFAULT_DIRECTION",
    "DEFAULT_INFLUENTIAL",
    "DEFAULT_MARGIN",
    "DEFAULT_MIN_STUDENT_INFLUENCE",
    "DEFAULT_WEAK_SIMILARITY",
    "METHOD_FIELDS",
    "SWEEP_METHOD_KEY",
    "TASK_ADAPTATION_KEY",
    "Alignment",
    "AmbiguousGroup",
    "Blame",
    "CircuitEdge",
    "CircuitResult",
    "CircuitsReport",
    "CompareSettings",
    "ComponentEffect",
    "Discarded",
    "GateResult",
    "GateThresholds",
    "MatchedPair",
    "MetricCheck",
    "MethodFingerprint",
    "ModelReport",
    "PairReport",
    "ReportFormatError",
    "RoleSweep",
    "Screening",
    "SweepConfigError",
    "SweepMethodRecord",
    "StabilityPoint",
    "SweepResult",
    "TaskPerformance",
    "as_model_info",
    "is_circuits_data",
    "library_versions",
    "read_report",
    "report_from_data",
    "report_from_dict",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_circuits.results' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
