"""The Ray tier: exact sweeps sharded over the actors of a local Ray instance (two CPUs, one
per actor) give the in-process values bit for bit, survive a killed actor, and fail with the
address named when the cluster is not there. One Ray instance per test process (``ray_local``).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")  # in the dev extra: present wherever the suite runs

from pytest_circuits.analysis import ablation, store  # noqa: E402
from pytest_circuits.config import context  # noqa: E402
from pytest_circuits.config.context import CacheStore  # noqa: E402
from pytest_circuits.distributed import RayClusterError, RayExecutor  # noqa: E402
from pytest_circuits.models import CircuitModel, load_model  # noqa: E402

#: One zoo model of each family the sweep must shard identically: GPT-2, Llama (grouped-query
#: attention), BERT and DistilBERT (masked).
FAMILIES = {
    "gpt2": "zoo:tiny-teacher",
    "llama": "zoo:tiny-llama-teacher",
    "bert": "zoo:tiny-bert-teacher",
    "distilbert": "zoo:tiny-distilbert-student",
}
N_PROMPTS = 6


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for this test process."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def executor(ray_local: None) -> Iterator[RayExecutor]:
    """The session's executor: two one-thread actors, alive across every test."""
    ex = RayExecutor("local", actors=2)
    yield ex
    ex.close()


class _Zoo(dict):
    """The zoo models by family, each loaded on first use (an xdist worker loads only the
    families its tests ask for)."""

    def __missing__(self, family: str) -> CircuitModel:
        model = self[family] = load_model(FAMILIES[family], device="cpu")
        return model


@pytest.fixture(scope="session")
def zoo() -> dict[str, CircuitModel]:
    return _Zoo()


def task_for(model: CircuitModel, name: str = "numerals") -> Any:
    return store.as_task(name, N_PROMPTS, 0, model)


def same_sweep(a: Any, b: Any) -> None:
    """Bit-identical values, standard errors, methods and bounds, in the same order."""
    assert [e.name for e in a.effects] == [e.name for e in b.effects]
    for x, y in zip(a.effects, b.effects, strict=True):
        assert (x.ablated_metric, x.stderr, x.method, x.bound) == (
            y.ablated_metric, y.stderr, y.method, y.bound), x.name


def sharded(executor: RayExecutor, **changes: Any) -> Any:
    return context.changed(executor=executor, **changes)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_sharded_exact_sweep_is_bit_identical_to_the_local_one(
        family: str, zoo: dict[str, CircuitModel], executor: RayExecutor) -> None:
    model = zoo[family]
    task = task_for(model)
    # three ablations per replay: stacks of the same layer share one replay, as on a GPU
    local = ablation.sweep(model, task, method="exact", ablations_per_forward=3)
    with sharded(executor):
        remote = ablation.sweep(model, task, method="exact", ablations_per_forward=3)
    same_sweep(local, remote)
    assert remote.fingerprint.key() == local.fingerprint.key()  # where it ran is not the method
    assert local.fingerprint.ran_on == ""
    assert remote.fingerprint.ran_on.startswith("Ray at local: 2 actors (2x cpu on ")


def test_prompt_chunks_are_sharded_and_merged_in_order(
        zoo: dict[str, CircuitModel], executor: RayExecutor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_circuits.analysis import engine

    model = zoo["gpt2"]
    task = task_for(model, "ioi")
    monkeypatch.setattr(engine, "PROMPT_BATCH", 4)  # 6 prompts: chunks of 4 and 2
    local = ablation.sweep(model, task, method="exact")
    with sharded(executor):
        remote = ablation.sweep(model, task, method="exact")
    same_sweep(local, remote)


def test_auto_shards_its_exact_measurements_the_same_way(
        zoo: dict[str, CircuitModel], executor: RayExecutor) -> None:
    model = zoo["llama"]
    task = task_for(model)
    local = ablation.sweep(model, task, method="auto")
    jobs: list[int] = []

    class Counting:
        def map(self, function: Any, model: Any, task: Any, batch: Any, weights: Any = None
                ) -> Any:
            jobs.append(len(batch))
            return executor.map(function, model, task, batch, weights)

        def describe(self) -> str:
            return executor.describe()

    with context.changed(executor=Counting()):
        remote = ablation.sweep(model, task, method="auto")
    same_sweep(local, remote)
    assert jobs and sum(jobs) == sum(e.method == "exact" for e in local.effects) * 1


def test_the_cache_stores_a_sharded_sweep_once_and_serves_it(
        zoo: dict[str, CircuitModel], executor: RayExecutor) -> None:
    model = zoo["bert"]
    task = task_for(model, "ioi")
    local = ablation.sweep(model, task, method="exact")
    memory = CacheStore()
    with sharded(executor, cache=memory):
        first = store.sweep_result(model, task, method="exact")
        again = store.sweep_result(model, task, method="exact")
    assert again is first
    assert sum(type(v).__name__ == "SweepResult" for v in memory.memory.values()) == 1
    same_sweep(local, first)


def test_actors_load_each_model_once_and_stay_alive_across_sweeps(
        zoo: dict[str, CircuitModel], executor: RayExecutor) -> None:
    model = zoo["gpt2"]
    with sharded(executor):
        for name in ("numerals", "ioi", "numwords"):
            ablation.sweep(model, task_for(model, name), method="exact")
        pids = executor.pids()
        loads = executor.actor_loads()
        ablation.sweep(model, task_for(model, "ioi"), method="exact", seed=1)
    assert executor.pids() == pids  # the same two processes
    assert executor.actor_loads() == loads  # nothing loaded again
    assert max(loads) <= len(FAMILIES)  # at most one load per model per actor


def test_a_model_without_a_loadable_source_is_shipped_through_the_object_store(
        zoo: dict[str, CircuitModel], executor: RayExecutor) -> None:
    model = copy.copy(zoo["distilbert"])
    model.source = "built in memory"  # no path: the actors cannot load it themselves
    model._fingerprint = "shipped-" + zoo["distilbert"].weights_fingerprint  # its own key
    task = task_for(model, "ioi")
    local = ablation.sweep(model, task, method="exact")
    with sharded(executor):
        remote = ablation.sweep(model, task, method="exact")
    same_sweep(local, remote)
    shipped = [s for s in executor._specs.values() if s.source == "built in memory"]
    assert len(shipped) == 1 and shipped[0].shipped  # one reference, sent once


def test_an_actor_killed_mid_sweep_has_its_share_rerun(
        zoo: dict[str, CircuitModel], executor: RayExecutor) -> None:
    model = zoo["llama"]
    task = task_for(model, "ioi")
    local = ablation.sweep(model, task, method="exact")
    victim = executor.pids()[0]
    seen: list[tuple[int, int]] = []

    def kill_on_first_report(name: str, done: int, total: int) -> None:
        if not seen:
            os.kill(victim, signal.SIGKILL)  # kill -9, with its other shares still queued
        seen.append((done, total))

    with sharded(executor, progress=kill_on_first_report):
        remote = ablation.sweep(model, task, method="exact")
    same_sweep(local, remote)
    assert victim not in executor.pids()  # Ray restarted the actor in a new process
    total = len(local.effects)
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 2


def test_a_cluster_that_stops_answering_mid_sweep_ends_the_gate_with_its_address(
        zoo: dict[str, CircuitModel], executor: RayExecutor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = zoo["gpt2"]
    task = task_for(model, "numwords")
    with sharded(executor):  # the actors have the model: only the shares are waited for
        ablation.sweep(model, task_for(model), method="exact")
    monkeypatch.setattr(executor, "share_timeout_s", 1e-3)  # no share comes back in time
    with sharded(executor, cache=CacheStore()) as running, \
            pytest.raises(RayClusterError, match=r"the Ray cluster at 'local' returned no share"):
        store.sweep_result(model, task, method="exact")
    assert not running.cache.memory  # no partial sweep was stored as a result


def test_an_address_nothing_listens_on_is_an_error_naming_it(
        zoo: dict[str, CircuitModel]) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    model = zoo["gpt2"]
    begun = time.perf_counter()
    with sharded(RayExecutor(address, connect_timeout_s=2), cache=CacheStore()) as running, \
            pytest.raises(RayClusterError, match=rf"Ray cluster at '{address}' does not answer"):
        store.sweep_result(model, task_for(model), method="exact")
    assert time.perf_counter() - begun < 10
    assert not running.cache.memory


def test_without_the_setting_ray_is_never_imported(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(_root()), os.environ.get("PYTHONPATH", "")])))
    # the sweep's seam, the plugin's session and the distributed package itself import no Ray
    pytester.makepyfile(test_plain="""
        import sys
        import pytest_circuits.distributed
        from pytest_circuits.analysis import ablation
        from pytest_circuits.config import context

        def test_no_ray():
            assert context.current().executor is None
            assert "ray" not in sys.modules
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_a_gate_file_runs_end_to_end_on_a_local_ray(pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(_root()), os.environ.get("PYTHONPATH", "")])))
    pytester.makefile(".yaml", circuits="""
        pairs:
          good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
        defaults:
          n_prompts: 6
        gates:
          - name: numerals-robust
            pair: good
            task: numerals
            ablation_robust: {components: heads, max_single_drop: 99}
          - name: ioi-robust
            pair: good
            task: ioi
            ablation_robust: {components: heads, max_severity_increase: 0.5}
    """)
    pytester.makepyfile(conftest="""
        import sys

        def pytest_sessionfinish(session):
            if hasattr(session.config, "workerinput"):  # a worker: its sweeps went through Ray
                assert "ray" in sys.modules
    """)
    # two xdist workers: gates of different tasks at once, each worker with its own share of
    # actors (one each here: a pool sized to the whole machine would leave the other waiting)
    result = pytester.runpytest_subprocess("--circuits-ray=local", "--circuits-json=out.json",
                                           "-p", "no:cacheprovider", "--circuits-no-cache",
                                           "-n", "2", "--dist", "load", timeout=300)
    result.assert_outcomes(passed=2)
    import json

    data = json.loads((pytester.path / "out.json").read_text())
    text = json.dumps(data)
    # each worker's fingerprints say where they ran: its own instance with its one actor
    assert "Ray at local: 1 actors" in text and "Ray at local: 2 actors" not in text
    assert {r["task"] for r in data["results"]} == {"numerals", "ioi"}


def test_test_processes_sharing_a_cluster_split_its_actors(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from types import SimpleNamespace

    from pytest_circuits.distributed import RayClusterError, RayExecutor

    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 4.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    started: list[int] = []

    def pool_of(executor: RayExecutor) -> int:
        fake.remote = lambda cls: SimpleNamespace(options=lambda **kw: SimpleNamespace(
            remote=lambda threads: started.append(1) or SimpleNamespace(
                where=SimpleNamespace(remote=lambda: {}))))
        monkeypatch.setattr(executor, "_get", lambda refs, what: list(refs))
        before = len(started)
        executor._pool(0.0)
        return len(started) - before

    assert pool_of(RayExecutor("10.0.0.5:6379")) == 4  # one process: every CPU
    assert pool_of(RayExecutor("10.0.0.5:6379", sessions=2)) == 2  # pytest -n 2: half each
    with pytest.raises(RayClusterError, match=r"pytest -n 5.*room for 4 actors.*-n 4 or fewer"):
        RayExecutor("10.0.0.5:6379", sessions=5)._pool(0.0)


def _root() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def test_the_address_comes_from_the_option_the_ini_key_or_ray_address(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_circuits.settings import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(pytester.parseconfig()) is None
    chosen = ray_address(pytester.parseconfig("--circuits-ray=10.0.0.5:6379"))
    assert (chosen.value, chosen.origin) == ("10.0.0.5:6379", "--circuits-ray")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    chosen = ray_address(pytester.parseconfig())
    assert (chosen.value, chosen.origin) == ("auto", "environment variable RAY_ADDRESS")
    chosen = ray_address(pytester.parseconfig("--circuits-ray=local"))  # the option wins
    assert chosen.value == "local"
    with pytest.raises(pytest.UsageError, match="the Ray address is empty"):
        ray_address(pytester.parseconfig("--circuits-ray= "))


def test_actors_ask_for_the_gpus_a_model_needs() -> None:
    from types import SimpleNamespace

    from pytest_circuits.distributed import gpus_for

    def model(device: str, device_map: dict[str, Any] | None = None) -> Any:
        return SimpleNamespace(device_kind=device.split(":")[0], device_map=device_map)

    assert gpus_for(model("cpu")) == 0.0
    assert gpus_for(model("cuda:0")) == 1.0  # one GPU per actor
    spread = {"embed": 0, "layers.0": 0, "layers.40": 1, "lm_head": "cpu"}
    assert gpus_for(model("cuda:0", spread)) == 2.0  # every GPU the device_map spans
