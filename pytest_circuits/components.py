"""Component names (``L3H7`` for a head, ``MLP4`` for an MLP layer) and their parsing."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ComponentError

_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_MLP = re.compile(r"^MLP(\d+)$")


@dataclass(frozen=True, order=True)
class Component:
    """One ablatable unit: an attention head (``kind="head"``) or an MLP layer (``kind="mlp"``).

    Ordering is by layer, then heads before the MLP of the same layer, which is the order in
    which they act in the residual stream.
    """

    layer: int
    order: int  # head index for heads, a large number for the MLP so it sorts after the heads
    kind: str

    @property
    def head(self) -> int | None:
        return self.order if self.kind == "head" else None

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.order}"
        return f"MLP{self.layer}"

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def head_at(layer: int, head: int) -> Component:
        return Component(layer, head, "head")

    @staticmethod
    def mlp_at(layer: int) -> Component:
        return Component(layer, 1_000_000, "mlp")

    @staticmethod
    def parse(name: str) -> Component:
        """Parse ``L{layer}H{head}`` or ``MLP{layer}`` (layers and heads count from 0)."""
        text = str(name).strip()
        match = _HEAD.match(text)
        if match:
            return Component.head_at(int(match.group(1)), int(match.group(2)))
        match = _MLP.match(text)
        if match:
            return Component.mlp_at(int(match.group(1)))
        raise ComponentError(
            f"component name {name!r} is not understood: write heads as 'L<layer>H<head>' "
            "(for example 'L3H7') and MLP layers as 'MLP<layer>' (for example 'MLP4'), "
            "counting layers and heads from 0"
        )


def all_components(n_layers: int, n_heads: int, which: str = "all") -> list[Component]:
    """Every component of a model, in residual-stream order. ``which``: all | heads | mlps."""
    if which not in ("all", "heads", "mlps"):
        raise ComponentError(
            f"components={which!r} is not one of 'all', 'heads', 'mlps' or a list of names"
        )
    found: list[Component] = []
    for layer in range(n_layers):
        if which in ("all", "heads"):
            found.extend(Component.head_at(layer, h) for h in range(n_heads))
        if which in ("all", "mlps"):
            found.append(Component.mlp_at(layer))
    return found


def select_components(
    spec: str | Sequence[str | Component] | Iterable[str | Component],
    n_layers: int,
    n_heads: int,
    *,
    model_name: str = "model",
) -> list[Component]:
    """Resolve a components argument ("all", "heads", "mlps" or names) against a model's shape."""
    if isinstance(spec, str):
        if spec in ("all", "heads", "mlps"):
            return all_components(n_layers, n_heads, spec)
        spec = [spec]
    chosen: list[Component] = []
    for item in spec:
        comp = item if isinstance(item, Component) else Component.parse(item)
        if not 0 <= comp.layer < n_layers or (
            comp.kind == "head" and not 0 <= comp.order < n_heads
        ):
            raise ComponentError(
                f"component {comp.name} does not exist in {model_name}, which has "
                f"{n_layers} layers (0..{n_layers - 1}) and {n_heads} heads per layer "
                f"(0..{n_heads - 1})"
            )
        if comp not in chosen:
            chosen.append(comp)
    if not chosen:
        raise ComponentError(
            f"no components selected for {model_name}: pass 'all', 'heads', 'mlps' or a "
            "non-empty list of names such as ['L0H1', 'MLP2']"
        )
    return sorted(chosen)
