"""Method fingerprints, re-exported from their torch-free home :mod:`pytest_circuits.results`."""

from __future__ import annotations

from ..results.fingerprint import (
    METHOD_FIELDS,
    OPTIONAL_METHOD_FIELDS,
    MethodFingerprint,
    library_versions,
)

__all__ = ["METHOD_FIELDS", "OPTIONAL_METHOD_FIELDS", "MethodFingerprint", "library_versions"]
