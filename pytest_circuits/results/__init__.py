"""Typed, torch-free results: gate results, model and pair reports, sweeps, fingerprints.

Each type turns into plain JSON data with ``to_dict`` and back with ``from_dict``; results files,
baselines, the analysis cache and the reports read them from here without importing torch.
"""

from __future__ import annotations

from .fingerprint import DEFAULT_DIRECTION, METHOD_FIELDS, MethodFingerprint, library_versions
from .gate import (
    SWEEP_METHOD_KEY,
    TASK_ADAPTATION_KEY,
    Blame,
    GateResult,
    MetricCheck,
    RoleSweep,
    SweepMethodRecord,
    as_model_info,
    report_from_data,
)
from .reports import (
    DEFAULT_INFLUENTIAL,
    DEFAULT_MIN_STUDENT_INFLUENCE,
    DEFAULT_WEAK_SIMILARITY,
    Alignment,
    AmbiguousGroup,
    CompareSettings,
    Discarded,
    MatchedPair,
    ModelReport,
    PairReport,
    ReportFormatError,
    report_from_dict,
)
from .sweep import (
    DEFAULT_MARGIN,
    ComponentEffect,
    GateThresholds,
    Screening,
    SweepConfigError,
    SweepResult,
    TaskPerformance,
)

__all__ = [
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
    "SweepResult",
    "TaskPerformance",
    "as_model_info",
    "library_versions",
    "report_from_data",
    "report_from_dict",
]
