"""The paper's measurements: ablation sweeps, brittleness, similarity, matching, alignment."""

from .ablation import (
    ComponentEffect,
    SweepResult,
    TaskPerformance,
    logit_diff,
    require_valid_task,
    spearman,
    sweep,
    task_performance,
)
from .fingerprint import MethodFingerprint
from .matching import Match
from .report import (
    Alignment,
    Discarded,
    MatchedPair,
    ModelReport,
    PairReport,
    compare,
    model_report,
)

__all__ = [
    "Alignment",
    "ComponentEffect",
    "Discarded",
    "Match",
    "MatchedPair",
    "MethodFingerprint",
    "ModelReport",
    "PairReport",
    "SweepResult",
    "TaskPerformance",
    "compare",
    "logit_diff",
    "model_report",
    "require_valid_task",
    "spearman",
    "sweep",
    "task_performance",
]
