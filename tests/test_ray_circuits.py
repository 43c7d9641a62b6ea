"""Circuit discovery on Ray actors: with ``RunContext.executor`` set, each stability threshold's
pruning runs as one job on the actors (the discovery's own threshold with its node drops and
complement), and the result is the in-process discovery's bit for bit, its cost included.

Reuses ``tests/test_ray.py``'s local Ray instance (``ray_local``: two CPUs). That module's
session executor holds both CPUs once its tests have run, so this module's two actors reserve
none (``actor_cpus=0``) and are ended when the module is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from test_ray import ray_local  # noqa: E402,F401 - the session's Ray instance (a fixture)

from pytest_circuits.analysis import circuits, store  # noqa: E402
from pytest_circuits.analysis.circuits import PruneJob, discover_circuit  # noqa: E402
from pytest_circuits.components import all_components  # noqa: E402
from pytest_circuits.config import context  # noqa: E402
from pytest_circuits.distributed import RayExecutor  # noqa: E402
from pytest_circuits.models import CircuitModel, load_model  # noqa: E402

N_PROMPTS = 6


@pytest.fixture(scope="module")
def actors(ray_local: None) -> Iterator[RayExecutor]:  # noqa: F811 - the imported fixture
    ex = RayExecutor("local", actors=2, actor_cpus=0)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


def comparable(result: Any) -> dict[str, Any]:
    """Every field but the wall time and where it ran."""
    data = dataclasses.asdict(result)
    data.pop("wall_seconds")
    data["fingerprint"] = {k: v for k, v in data["fingerprint"].items() if k != "ran_on"}
    return data


class Recording:
    """The executor, recording the jobs it is given."""

    def __init__(self, executor: RayExecutor) -> None:
        self.executor = executor
        self.jobs: list[Any] = []

    def map(self, function: Any, model: Any, task: Any, jobs: Any, weights: Any = None) -> Any:
        self.jobs.extend(jobs)
        return self.executor.map(function, model, task, jobs, weights)

    def describe(self) -> str:
        return self.executor.describe()


@pytest.mark.parametrize("settings", [
    {},  # the paper's: every head and MLP, the five stability thresholds, one per replay
    # MLPs never visited (measured on the circuit's run), speculative stacks of 3, edges
    {"candidates": "heads", "ablations_per_forward": 3, "edges": True,
     "stability": (0.3, 0.1), "threshold": 0.25},
], ids=["paper", "heads-stacked-edges"])
def test_discovery_with_an_executor_equals_it_without(
        settings: dict[str, Any], teacher: CircuitModel, actors: RayExecutor) -> None:
    task = store.as_task("numerals", N_PROMPTS, 0, teacher)
    local = discover_circuit(teacher, task, **settings)
    recording = Recording(actors)
    seen: list[tuple[str, int, int]] = []
    with context.changed(executor=recording, progress=lambda *report: seen.append(report)):
        remote = discover_circuit(teacher, task, **settings)
    assert comparable(remote) == comparable(local)  # nodes, drops, stability, edges, cost: bits
    assert remote.cost_fe == local.cost_fe and remote.node_drops == local.node_drops
    assert local.fingerprint["ran_on"] == ""
    assert remote.fingerprint["ran_on"].startswith("Ray at local: 2 actors")
    # one job per threshold, the discovery's own first (it measures drops and complement too)
    threshold = settings.get("threshold", circuits.DEFAULT_THRESHOLD)
    levels = settings.get("stability", circuits.DEFAULT_STABILITY)
    assert all(isinstance(job, PruneJob) for job in recording.jobs)
    assert [(job.threshold, job.main) for job in recording.jobs] == [(threshold, True)] + [
        (level, False) for level in levels if level != threshold]
    # progress counts the candidates of every job, across both actors, up to all of them
    pool = len(all_components(4, 4, "heads" if settings.get("candidates") == "heads" else "all"))
    total = pool * len(recording.jobs)
    assert {(name, t) for name, _, t in seen} == {(teacher.name, total)}
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and done[-1] == total and len(done) == len(recording.jobs)
    if settings.get("candidates") == "heads":  # every MLP kept, its drop measured on an actor
        assert {f"MLP{layer}" for layer in range(4)} <= set(remote.node_drops)
        assert remote.edges  # path patching ran on the driver, on the actors' circuit


def test_a_prune_job_is_what_the_in_process_pruner_finds(teacher: CircuitModel) -> None:
    """The worker's function, run here: its circuit, metric, drops and costs are those of a
    plain pruner at that threshold, and only the main job measures the complement."""
    task = store.as_task("numerals", N_PROMPTS, 0, teacher)
    pool = tuple(all_components(4, 4))
    pruner = circuits._Pruner(teacher, task, "mean", 0, 1)
    start = pruner.cost_fe
    circuit, evaluations, passes = pruner.prune(0.3, pool)
    side = circuits.run_prune(teacher, task, PruneJob(0.3, pool, "mean", 0, 1))
    assert (list(side.circuit), dict(side.evaluations), side.passes, side.metric) == (
        circuit, evaluations, passes, pruner.metric)
    assert side.removed == tuple(pruner.removed) and len(side.removed) == 16 + 4 - len(circuit)
    assert start + sum(side.costs) == pruner.cost_fe  # quarters of a pass: exact sums
    assert side.complement != side.complement and not side.complement_costs  # NaN: not measured
    main = circuits.run_prune(teacher, task, PruneJob(0.3, pool, "mean", 0, 1, main=True))
    assert main.complement == pruner.ablated_from_clean(circuit)
    assert main.complement_costs == (1.0 - min(c.layer for c in circuit) / 4,)
