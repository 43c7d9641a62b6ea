"""Plain-data identity of a loaded model, stored with every result (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

#: What a model predicts: the next token ("causal") or a masked one ("masked").
MODEL_KINDS: tuple[str, ...] = ("causal", "masked")


def model_name(model: Any) -> str:
    """A model's name from a ModelInfo, a loaded model or a plain-dict description."""
    if isinstance(model, Mapping):
        return str(model.get("name"))
    return str(getattr(model, "name", None))


@dataclass(frozen=True)
class ModelInfo:
    """Who a model is: where it came from, its shape and a fingerprint of its weights."""

    name: str
    source: str
    architecture: str
    kind: str  # "causal" or "masked"
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    n_params: int
    dtype: str
    device_kind: str
    processing: str
    weights_sha256: str
    family: str = ""
    n_kv_heads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model description has unknown fields {unknown}")
        return cls(**data)
