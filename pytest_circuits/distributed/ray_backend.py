"""Exact sweeps sharded over Ray actors: each actor loads the model itself, captures the clean
run once and replays the stacks it is given; the driver merges the values in the in-process
sweep's order, so a sharded sweep is bit-identical to the local one on the same device type.

The executor is installed in the run's context (``RunContext.executor``) by ``--circuits-ray``
and lives for the session: its actors stay alive across gates, so a session with many gates
loads each model once per actor. Ray is imported only when the executor first connects.

The same actors run circuit discovery's prunes (``analysis.circuits.run_prune``: each
stability threshold's pruning as one job, the discovery's own threshold with the node drops and
the complement measured on its circuit's run) through :meth:`RayExecutor.map`.

Models reach the actors by their source (a directory, a GGUF file, a hub snapshot or a zoo
model's directory): the first actor to load one checks that it gets the driver's weights and
tokenizer (their sha256), and a model that cannot be loaded that way (built in memory, or a path
the cluster does not have) is saved once and shipped through the object store instead.

Faults: actors restart after a crash (``max_restarts``) and Ray re-runs the shares they held
(``max_task_retries``), so a worker killed mid-sweep costs time, not values. A cluster that does
not answer, or loses a share for good, raises :class:`RayClusterError` naming the address; a
partial sweep is never returned.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import progress
from ..errors import CircuitsError

#: ``--circuits-ray=local`` starts (or joins) a Ray instance on this machine.
LOCAL = "local"
#: How long a share may take before the cluster counts as gone (seconds).
DEFAULT_SHARE_TIMEOUT_S = 3600.0
#: How long the cluster's address may take to accept a connection (seconds).
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Shares per actor and sweep: more shares balance the load (a replay from layer 0 costs more
#: than one from the last layer) and report progress more often; fewer cost less overhead.
SHARES_PER_ACTOR = 4


class RayClusterError(CircuitsError, RuntimeError):
    """The Ray cluster could not be reached, or lost work for good: the gate has no verdict."""


@dataclass(frozen=True)
class ModelSpec:
    """How an actor obtains a model: load ``source`` (in ``dtype``, on a GPU when ``gpus``),
    or, when ``shipped`` holds an object-store reference, unpack the saved files it refers to.
    ``key`` is the model's content (weights and tokenizer sha256), so one actor loads one model
    once however many names it has."""

    key: str
    name: str
    source: str
    dtype: str
    gpus: float = 0.0
    device_map: bool = False
    shipped: tuple[Any, ...] = ()  # (ObjectRef,) of {relative path: bytes}; empty: load source


def _model_key(model: Any) -> str:
    return f"{model.weights_fingerprint}:{model.tokenizer_digest}:{model.dtype}"


def gpus_for(model: Any) -> float:
    """GPUs one actor needs for ``model``: none on the CPU, one for a model on one GPU, every
    device a ``device_map`` model is spread over (a whole node for a large teacher)."""
    if model.device_kind == "cpu":
        return 0.0
    if model.device_map:
        devices = {str(d) for d in model.device_map.values() if str(d) not in ("cpu", "disk")}
        return float(max(1, len(devices)))
    return 1.0


class SweepWorker:
    """A Ray actor's state: the models it has loaded (by content key) and their memoised clean
    runs. Plain class; :meth:`RayExecutor._pool` wraps it with ``ray.remote``."""

    def __init__(self, threads: int) -> None:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        self.models: dict[str, Any] = {}
        self.loads = 0

    def where(self) -> dict[str, Any]:
        import ray
        import torch

        gpus = ray.get_gpu_ids()
        device = f"cuda ({torch.cuda.get_device_name(0)})" if gpus else "cpu"
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": device}

    def load(self, spec: ModelSpec) -> tuple[str, int]:
        """Load ``spec`` (once) and return its content key as this actor sees it, and how
        many loads this actor has done."""
        return _model_key(self._model(spec)), self.loads

    def loaded(self) -> int:
        return self.loads

    def run(self, spec: ModelSpec, task: Any, function: Callable[..., Any],
            jobs: Sequence[Any], prompt_batch: int) -> list[Any]:
        from ..analysis import engine

        # the driver's prompt batch: reference statistics are summed chunk by chunk, so the
        # same chunks give the same bits
        engine.PROMPT_BATCH = prompt_batch
        model = self._model(spec)
        return [function(model, task, job) for job in jobs]

    def _model(self, spec: ModelSpec) -> Any:
        model = self.models.get(spec.key)
        if model is None:
            model = self._load(spec)
            self.models[spec.key] = model
            self.loads += 1
        return model

    def _load(self, spec: ModelSpec) -> Any:
        import ray

        from ..models import load_model

        placement: dict[str, Any] = (
            {"device_map": "auto", "device": None} if spec.device_map
            else {"device": "cuda" if spec.gpus else "cpu"})
        if not spec.shipped:
            return load_model(spec.source, dtype=spec.dtype, name=spec.name, **placement)
        files = ray.get(spec.shipped[0])
        directory = Path(tempfile.mkdtemp(prefix="pytest-circuits-model-"))
        for relative, data in files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return load_model(directory, dtype=spec.dtype, name=spec.name, **placement)


def _probe(address: str, timeout_s: float) -> None:
    """Refuse an address nothing answers on within ``timeout_s`` (before Ray waits longer)."""
    if address in ("auto", LOCAL):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(
            f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local; write "
            "e.g. --circuits-ray=10.0.0.5:6379 (the head node's GCS port)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayClusterError(
            f"the Ray cluster at {address!r} does not answer ({exc}); start it (ray start "
            "--head), fix --circuits-ray / RAY_ADDRESS, or unset it to sweep in this process"
        ) from exc


def _package_root() -> str:
    """The directory this package is imported from, so local actors import the same code."""
    return str(Path(__file__).resolve().parent.parent.parent)


@dataclass(eq=False)
class RayExecutor:
    """Runs sweep jobs on Ray actors (see the module docstring): an ``analysis.ablation``
    ``Executor``. ``address`` is ``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.

    ``actors`` per pool (default: the cluster's CPUs / ``threads`` for CPU models, its GPUs
    / the GPUs one model needs for GPU models); ``threads`` torch threads per actor, each
    reserving ``actor_cpus`` of Ray's CPUs (default: ``threads``).
    ``num_cpus`` sizes a local instance this executor starts (default: the machine's cores).
    ``sessions`` is how many test processes share the cluster (``pytest -n N``: N xdist
    workers, each with its own executor): each takes 1/``sessions`` of the actors (at least
    one), so that no worker's pool waits for resources another worker's actors hold, and a
    local instance gets 1/``sessions`` of the cores.
    """

    address: str
    actors: int | None = None
    threads: int = 1
    actor_cpus: float | None = None
    num_cpus: int | None = None
    share_timeout_s: float = DEFAULT_SHARE_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_restarts: int = 4
    max_task_retries: int = 4
    origin: str = "--circuits-ray"
    sessions: int = 1
    _connected: bool = field(default=False, repr=False)
    _started_ray: bool = field(default=False, repr=False)
    _pools: dict[float, list[Any]] = field(default_factory=dict, repr=False)
    _where: dict[float, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _specs: dict[str, ModelSpec] = field(default_factory=dict, repr=False)
    #: seconds spent connecting, shipping models and merging (for the benchmark)
    timings: Counter[str] = field(default_factory=Counter, repr=False)

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        """Join the cluster (or start a local instance) once; errors name the address."""
        if self._connected:
            return
        start = time.perf_counter()
        try:
            import ray
        except ImportError as exc:
            raise RayClusterError(
                f"{self.origin}={self.address} needs Ray: pip install 'pytest-circuits[ray]'"
            ) from exc
        _probe(self.address, self.connect_timeout_s)  # a dead address fails fast, always
        if not ray.is_initialized():  # else join the instance this process already runs
            try:
                if self.address == LOCAL:
                    cores = os.cpu_count() or 1
                    ray.init(address="local",
                             num_cpus=self.num_cpus or max(1, cores // self.sessions),
                             include_dashboard=False,
                             log_to_driver=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
            except Exception as exc:  # ConnectionError, RuntimeError, gRPC errors
                raise RayClusterError(
                    f"could not join the Ray cluster at {self.address!r} ({type(exc).__name__}: "
                    f"{exc}); check {self.origin}, or unset it to sweep in this process"
                ) from exc
            self._started_ray = True
        self._connected = True
        self.timings["connect"] += time.perf_counter() - start

    def close(self) -> None:
        """End the actors, and the Ray instance when this executor started it."""
        if not self._connected:
            return
        import ray

        for pool in self._pools.values():
            for actor in pool:
                ray.kill(actor)
        self._pools.clear()
        self._specs.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._connected = False

    def describe(self) -> str:
        """"Ray at ADDRESS: N actors on DEVICES" (the fingerprint's ``ran_on``)."""
        places = Counter(f"{w['device']} on {w['node']}"
                         for pool in self._where.values() for w in pool)
        where = ", ".join(f"{n}x {place}" for place, n in sorted(places.items()))
        actors = sum(len(pool) for pool in self._pools.values())
        return f"Ray at {self.address}: {actors} actors" + (f" ({where})" if where else "")

    # ------------------------------------------------------------------ actors

    def _pool(self, gpus: float) -> list[Any]:
        """The actors for models that need ``gpus`` GPUs each, started on first use."""
        pool = self._pools.get(gpus)
        if pool is not None:
            return pool
        import ray

        count = self.actors
        if count is None:
            resources = ray.cluster_resources()
            count = (int(resources.get("GPU", 0) // gpus) if gpus
                     else int(resources.get("CPU", 1) // self.threads))
            # a local instance is this process's own, already sized to its share of the cores
            sessions = 1 if self.address == LOCAL else self.sessions
            if sessions > 1 and 0 < count < sessions:
                raise RayClusterError(
                    f"{sessions} test processes (pytest -n {sessions}) share the Ray "
                    f"cluster at {self.address!r}, which has room for {count} actors needing "
                    f"{gpus} GPUs and {self.threads} CPUs each: every process keeps its actors "
                    "for the session, so the others would wait for good; run with -n "
                    f"{count} or fewer, or give the cluster more resources")
            count //= max(1, sessions)
            if count < 1:
                raise RayClusterError(
                    f"the Ray cluster at {self.address!r} has {resources.get('GPU', 0)} GPUs, "
                    f"{resources.get('CPU', 0)} CPUs: not enough for one actor needing "
                    f"{gpus} GPUs and {self.threads} CPUs")
        env = {"OMP_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
        if self.address == LOCAL:  # same machine: import this very copy of the package
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [_package_root(), os.environ.get("PYTHONPATH", "")]))
        remote = ray.remote(SweepWorker).options(
            num_cpus=self.threads if self.actor_cpus is None else self.actor_cpus,
            num_gpus=gpus, max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries, runtime_env={"env_vars": env})
        pool = [remote.remote(self.threads) for _ in range(count)]
        self._pools[gpus] = pool
        self._where[gpus] = self._get([actor.where.remote() for actor in pool], "start actors")
        return pool

    def actor_loads(self, gpus: float = 0.0) -> list[int]:
        """How many models each actor of a pool has loaded since it (re)started."""
        import ray

        return ray.get([actor.loaded.remote() for actor in self._pools[gpus]])

    def pids(self, gpus: float = 0.0) -> list[int]:
        """The process ids of a pool's actors now, starting them if need be (for the fault
        test)."""
        self.connect()
        import ray

        return [info["pid"] for info in ray.get(
            [actor.where.remote() for actor in self._pool(gpus)])]

    def _spec(self, model: Any) -> ModelSpec:
        """How the actors obtain ``model``: its source when one actor loads the same weights
        and tokenizer from it, else its saved files through the object store (once)."""
        key = _model_key(model)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        start = time.perf_counter()
        spec = ModelSpec(key=key, name=model.name, source=str(model.source), dtype=model.dtype,
                         gpus=gpus_for(model), device_map=bool(model.device_map))
        actor = self._pool(spec.gpus)[0]
        loaded = False
        if os.path.exists(spec.source):
            import ray

            try:
                seen, _ = ray.get(actor.load.remote(spec), timeout=self.share_timeout_s)
                loaded = seen == key
            except ray.exceptions.RayTaskError:  # the cluster cannot load it from there
                loaded = False
        if not loaded:
            spec = self._shipped(spec, model)
        self._specs[key] = spec
        self.timings["ship"] += time.perf_counter() - start
        return spec

    def _shipped(self, spec: ModelSpec, model: Any) -> ModelSpec:
        import dataclasses

        import ray

        with tempfile.TemporaryDirectory(prefix="pytest-circuits-ship-") as tmp:
            saved = Path(model.save_pretrained(tmp))
            files = {str(p.relative_to(saved)): p.read_bytes()
                     for p in sorted(saved.rglob("*")) if p.is_file()}
        return dataclasses.replace(spec, shipped=(ray.put(files),))

    # ------------------------------------------------------------------ running

    def map(self, function: Callable[[Any, Any, Any], Any], model: Any, task: Any,
            jobs: Sequence[Any], weights: Sequence[int] | None = None) -> list[Any]:
        """``function(model, task, job)`` for each job, run on the actors in shares of
        consecutive jobs, returned in the jobs' order. Progress (``weights``: each job's
        ablations, default 1) is reported here as shares finish."""
        if not jobs:
            return []
        self.connect()
        import ray

        from ..analysis import engine

        prompt_batch = engine.PROMPT_BATCH
        # what the jobs are, in errors: a sweep's stacks, or e.g. a circuit discovery's prunes
        what = f"{model.name}'s {getattr(function, 'job_label', 'sweep')}"
        spec = self._spec(model)
        pool = self._pool(spec.gpus)
        weights = list(weights) if weights is not None else [1] * len(jobs)
        total, done = sum(weights), 0
        size = max(1, -(-len(jobs) // (len(pool) * SHARES_PER_ACTOR)))
        shares = [range(start, min(start + size, len(jobs)))
                  for start in range(0, len(jobs), size)]
        task_ref = ray.put(task)
        results: list[Any] = [None] * len(jobs)
        waiting = list(range(len(shares)))[::-1]  # popped from the end: share 0 first
        running: dict[Any, tuple[int, int]] = {}  # ref -> (share, actor)

        def submit(actor_index: int) -> None:
            share = waiting.pop()
            ref = pool[actor_index].run.remote(spec, task_ref, function,
                                               [jobs[i] for i in shares[share]], prompt_batch)
            running[ref] = (share, actor_index)

        try:
            for actor_index in range(len(pool)):  # two shares in flight per actor
                for _ in range(2):
                    if waiting:
                        submit(actor_index)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1,
                                    timeout=self.share_timeout_s)
                if not ready:
                    raise RayClusterError(
                        f"the Ray cluster at {self.address!r} returned no share of "
                        f"{what} in {self.share_timeout_s:.0f} s; the gate has no "
                        "verdict (is the cluster alive? raise the timeout for slow shares)")
                ref = ready[0]
                share, actor_index = running.pop(ref)
                values = self._get(ref, what)
                for index, value in zip(shares[share], values, strict=True):
                    results[index] = value
                    done += weights[index]
                progress.report(model.name, done, total)
                if waiting:
                    submit(actor_index)
        finally:
            for ref in running:  # an error left shares running: they are not read
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - a lost cluster cannot cancel; the error stands
                    pass
        return results

    def _get(self, refs: Any, what: str) -> Any:
        """``ray.get`` with the cluster's failures as :class:`RayClusterError` and a share's own
        error (a NaN, a bad task) re-raised as itself."""
        import ray

        try:
            return ray.get(refs, timeout=self.share_timeout_s)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if cause is not None and not isinstance(cause, ray.exceptions.RayError):
                raise cause from exc
            raise RayClusterError(
                f"the Ray cluster at {self.address!r} failed to {what}: {exc}") from exc
        except (ray.exceptions.RayError, TimeoutError) as exc:
            raise RayClusterError(
                f"the Ray cluster at {self.address!r} lost {what} ({type(exc).__name__}: "
                f"{exc}); the gate has no verdict: rerun when the cluster is back, or unset "
                f"{self.origin} to sweep in this process") from exc
