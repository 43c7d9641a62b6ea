"""Method fingerprints: what must match before two stored results may be compared (torch-free)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..config.options import DEFAULT_DIRECTION  # noqa: F401 (importable from here too)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (read from package metadata)."""
    from importlib import metadata

    found = {}
    for dist in ("pytest-circuits", "torch", "transformers", "transformer-lens", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


#: DEFAULT_DIRECTION (from the options) is also what a comparison's fingerprint written before
#: the direction was recorded means.

#: Fields that decide the numbers; a mismatch in any of them makes results incomparable.
METHOD_FIELDS = (
    "analysis",
    "ablation",
    "method",
    "similarity",
    "matching",
    "direction",
    "task",
    "task_sha256",
    "n_prompts",
    "n_reference",
    "seed",
    "dtype",
    "tie_margin",
    "noise_floor",
)
#: Method fields added after results were first stored: None means "not used" and leaves the
#: key as it was, so results and baselines stored before they existed keep their keys.
OPTIONAL_METHOD_FIELDS = ("tie_margin", "noise_floor")


@dataclass(frozen=True)
class MethodFingerprint:
    """How a result was measured. ``key()`` hashes the method fields only.

    ``method`` is the sweep algorithm ("exact" or "attribution"); ``matching`` ("paper",
    "causal" or "tie_aware") and ``direction`` ("teacher_to_student" or "student_to_teacher")
    say how a comparison paired components, and stay empty for a single-model sweep.
    ``tie_margin`` is tie-aware matching's similarity margin and ``noise_floor`` the influence
    (points) below which pairs left the weighted score; both are None when not used. Library
    versions and the device kind are recorded for the record (they move numbers by rounding,
    not by method) but are not part of the key, nor is ``ran_on`` (a Ray cluster, say).
    """

    analysis: str  # "sweep" | "compare" (a gate may record its own, e.g. "behavior")
    ablation: str
    method: str
    task: str
    task_sha256: str
    n_prompts: int
    n_reference: int
    seed: int
    dtype: str
    similarity: str = ""
    matching: str = ""
    direction: str = ""
    device_kind: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    tie_margin: float | None = None
    noise_floor: float | None = None
    #: where the sweeps ran when not in this process ("Ray at ADDRESS: N actors on DEVICES");
    #: for the record only, never part of the key (the values do not depend on it)
    ran_on: str = ""

    def key(self) -> str:
        method = {
            name: getattr(self, name) for name in METHOD_FIELDS
            if not (name in OPTIONAL_METHOD_FIELDS and getattr(self, name) is None)
        }
        return hashlib.sha256(json.dumps(method, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodFingerprint:
        """Inverse of :meth:`to_dict`; keys this version does not know are ignored, so a
        results file written by a newer release still reads."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
