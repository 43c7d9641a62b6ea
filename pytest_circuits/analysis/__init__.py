"""The paper's measurements: ablation sweeps, brittleness, similarity, matching, alignment."""

from .fingerprint import MethodFingerprint
from .ablation import (
    ComponentEffect,
    SweepResult,
    TaskPerformance,
    logit_diff,
    require_valid_task,
    sweep,
    task_performance,
)

__all__ = [
    "ComponentEffect",
    "MethodFingerprint",
    "SweepResult",
    "TaskPerformance",
    "logit_diff",
    "require_valid_task",
    "sweep",
    "task_performance",
]
