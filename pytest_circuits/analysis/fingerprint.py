"""Method fingerprints: what must match before two stored results may be compared."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


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


#: Fields that decide the numbers; a mismatch in any of them makes results incomparable.
METHOD_FIELDS = (
    "analysis",
    "ablation",
    "method",
    "similarity",
    "matching",
    "task",
    "task_sha256",
    "n_prompts",
    "n_reference",
    "seed",
    "dtype",
)


@dataclass(frozen=True)
class MethodFingerprint:
    """How a result was measured. ``key()`` hashes the method fields only.

    Library versions and the device kind are recorded for the record (they move numbers by
    rounding, not by method) and reported when they differ, but they do not block a comparison.
    """

    analysis: str  # "sweep" | "compare"
    ablation: str
    method: str  # "exact" | "attribution"
    task: str
    task_sha256: str
    n_prompts: int
    n_reference: int
    seed: int
    dtype: str
    similarity: str = ""
    matching: str = ""
    device_kind: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        method = {name: getattr(self, name) for name in METHOD_FIELDS}
        return hashlib.sha256(json.dumps(method, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: MethodFingerprint) -> list[str]:
        """Human-readable method fields that differ (empty when comparable)."""
        return [
            f"{name}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in METHOD_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]

    def environment_differences(self, other: MethodFingerprint) -> list[str]:
        notes = []
        if self.device_kind != other.device_kind:
            notes.append(f"device_kind: {self.device_kind!r} vs {other.device_kind!r}")
        for lib in sorted(set(self.versions) | set(other.versions)):
            a, b = self.versions.get(lib), other.versions.get(lib)
            if a != b:
                notes.append(f"{lib}: {a} vs {b}")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodFingerprint:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
