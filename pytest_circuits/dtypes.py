"""The one list of dtypes a model may be loaded in, and the aliases users write for them."""

from __future__ import annotations

#: Alias (lower case, without a ``torch.`` prefix) -> canonical torch dtype name.
DTYPE_ALIASES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}

#: The canonical names, in the order messages list them.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")


def canonical_dtype(name: str) -> str | None:
    """``"bf16"`` or ``"torch.bfloat16"`` -> ``"bfloat16"``; None when the name is not known."""
    return DTYPE_ALIASES.get(str(name).replace("torch.", "").strip().lower())
