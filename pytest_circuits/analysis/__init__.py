"""The paper's measurements: ablation sweeps, brittleness, similarity, matching, alignment.

Names load lazily, so importing a light submodule (``analysis.fingerprint``) does not import
torch through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ComponentEffect": "ablation",
    "SweepResult": "ablation",
    "TaskPerformance": "ablation",
    "logit_diff": "ablation",
    "require_valid_task": "ablation",
    "spearman": "ablation",
    "sweep": "ablation",
    "measure_task_performance": "ablation",
    "task_performance": "store",
    "sweep_result": "store",
    "pair_report": "cached",
    "MethodFingerprint": "fingerprint",
    "Match": "matching",
    "Alignment": "comparison",
    "CompareSettings": "comparison",
    "ReportFormatError": "comparison",
    "report_from_dict": "comparison",
    "Discarded": "comparison",
    "MatchedPair": "comparison",
    "ModelReport": "comparison",
    "PairReport": "comparison",
    "compare": "comparison",
    "model_report": "comparison",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_circuits.analysis' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
