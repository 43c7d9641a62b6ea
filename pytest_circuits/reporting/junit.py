"""JUnit XML properties: every value, threshold and verdict of each gate, on its test's case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..output import GateRecord
from ..results import GateResult
from .base import Writer


def property_prefix(result: GateResult, seen: dict[str, int]) -> str:
    """``circuits.<gate>``; a test's second result of the same gate gets ``#2`` and so on
    (``seen`` counts the test's results per gate so far)."""
    seen[result.gate] = seen.get(result.gate, 0) + 1
    count = seen[result.gate]
    return f"circuits.{result.gate}" + (f"#{count}" if count > 1 else "")


def junit_properties(result: GateResult, prefix: str) -> list[tuple[str, object]]:
    """(name, value) pairs for ``item.user_properties``: every value, threshold and verdict."""
    properties: list[tuple[str, object]] = [
        (f"{prefix}.subject", result.subject),
        (f"{prefix}.task", result.task),
        (f"{prefix}.passed", result.passed),
    ]
    checks = {c.metric: c for c in result.checks}
    for metric, value in result.values.items():
        properties.append((f"{prefix}.{metric}", value))
        if metric in checks:
            properties.append((f"{prefix}.{metric}.threshold", checks[metric].threshold))
            properties.append((f"{prefix}.{metric}.passed", checks[metric].passed))
    for check in result.checks:  # a checked metric the gate did not list among its values
        if check.metric not in result.values:
            properties.append((f"{prefix}.{check.metric}", check.value))
            properties.append((f"{prefix}.{check.metric}.threshold", check.threshold))
            properties.append((f"{prefix}.{check.metric}.passed", check.passed))
    return properties


class JUnitProperties(Writer):
    """Adds each gate result's properties to its test as it is recorded, so they sit in the
    order the test produced them among its other ``user_properties``."""

    name = "junit"

    def gate(self, item: Any, records: Sequence[GateRecord]) -> None:
        seen: dict[str, int] = {}
        prefixes = [property_prefix(r.result, seen) for r in records]
        item.user_properties.extend(junit_properties(records[-1].result, prefixes[-1]))
