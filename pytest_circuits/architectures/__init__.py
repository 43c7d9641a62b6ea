"""The registry of model families: one module per family here, found by ``architecture_for``.

Adding a family is adding one module beside ``gpt2.py`` that defines ``ARCHITECTURE`` (an
:class:`Architecture`): the registry discovers every such module, so nothing else is edited.
Torch-free at import.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import UnsupportedArchitectureError
from .base import (
    BRIDGE_HOOKS,
    MODEL_KINDS,
    Architecture,
    BlockLayout,
    ConfigKeys,
    HookNames,
    Shape,
    TinyConfig,
    TinyModel,
    ZooRecipe,
)

__all__ = [
    "ARCHITECTURES",
    "BRIDGE_HOOKS",
    "MODEL_KINDS",
    "Architecture",
    "BlockLayout",
    "ConfigKeys",
    "HookNames",
    "Shape",
    "TinyConfig",
    "TinyModel",
    "ZooRecipe",
    "architecture_for",
    "architecture_named",
    "supported_labels",
]


def _discover() -> dict[str, Architecture]:
    found: dict[str, Architecture] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        entry = getattr(module, "ARCHITECTURE", None)
        if not isinstance(entry, Architecture):
            raise TypeError(
                f"{module.__name__} defines no ARCHITECTURE = Architecture(...); every module in "
                "pytest_circuits/architectures/ other than base.py describes one family"
            )
        if entry.family in found:
            raise ValueError(f"family {entry.family!r} is defined twice ({module.__name__})")
        found[entry.family] = entry
    return found


#: Every known family by name (``"gpt2"``, ``"llama"``, ...), supported or not.
ARCHITECTURES: dict[str, Architecture] = _discover()

_BY_CLASS: dict[str, Architecture] = {
    cls: entry for entry in ARCHITECTURES.values() for cls in entry.hf_classes
}
_BY_MODEL_TYPE: dict[str, Architecture] = {
    model_type: entry for entry in ARCHITECTURES.values() for model_type in entry.model_types
}


def supported_labels() -> str:
    """``gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM)``: what messages list as loadable."""
    return ", ".join(e.label for e in ARCHITECTURES.values() if e.supported)


def architecture_named(hf_class: str) -> Architecture | None:
    """The family covering the Hugging Face class ``hf_class``, or None."""
    return _BY_CLASS.get(hf_class)


def _is_config(obj: Any) -> bool:
    # A model carries its config; a config does not carry one (and has model_type).
    return not hasattr(obj, "config") and hasattr(obj, "model_type")


def architecture_for(hf_model_or_config: Any, *, source: str | None = None) -> Architecture:
    """The family of a Hugging Face model or config (supported or not; see ``supported``).

    A model is looked up by its own class name (what its modules really are) and then by
    ``config.architectures``; GGUF-loaded models have no ``architectures``, so the class name is
    what finds them. A bare config is looked up by ``architectures`` and, only when that list is
    missing, by ``model_type``. Raises :class:`UnsupportedArchitectureError` naming the
    supported families when nothing matches.
    """
    obj = hf_model_or_config
    is_config = _is_config(obj)
    config = obj if is_config else getattr(obj, "config", None)
    candidates = [] if is_config else [type(obj).__name__]
    candidates += list(getattr(config, "architectures", None) or [])
    for name in candidates:
        entry = _BY_CLASS.get(name)
        if entry is not None:
            return entry
    model_type = getattr(config, "model_type", None)
    if is_config and not candidates and model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    seen = (
        f"architecture {candidates[0]!r}"
        if candidates
        else f"a config with no architectures list and model_type {model_type!r}"
    )
    where = f"{source}: " if source else ""
    pending = [f"{e.label} ({e.why})" for e in ARCHITECTURES.values() if not e.supported]
    known = f" Known but not yet loadable: {', '.join(pending)}." if pending else ""
    raise UnsupportedArchitectureError(
        f"{where}{seen} is not supported. Supported families: {supported_labels()}.{known} "
        "A new family is one module in pytest_circuits/architectures/."
    )
