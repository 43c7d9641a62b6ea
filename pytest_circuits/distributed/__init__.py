"""Past one machine: exact sweeps (and, through the same executor, circuit discovery's stacked
ablations) sharded over a Ray cluster. Optional: needs the ``ray`` extra, and Ray is imported
only when an executor first connects (see :mod:`.ray_backend`)."""

from __future__ import annotations

from .ray_backend import LOCAL, ModelSpec, RayClusterError, RayExecutor, SweepWorker, gpus_for

__all__ = ["LOCAL", "ModelSpec", "RayClusterError", "RayExecutor", "SweepWorker", "gpus_for"]
