"""Circuit discovery by iterative node pruning (after Lan & Barez), on the engine's replays.

Pruning starts from every head and MLP. A pass visits the components still in the circuit in a
fixed order; for each candidate it ablates the components already removed plus the candidate,
and removes the candidate when what remains keeps MORE than ``1 - threshold`` of the full
model's logit difference. The first pass runs backward (last layer to first; within a layer the
MLP, then the heads in index order), the next forward (first layer to last; within a layer the
heads in index order, then the MLP), and so on alternately until a pass removes nothing.

Speed: every ablation (mean, zero, or resample with seeded picks) writes a value that does not
depend on the run, so the run of the current circuit is a fixed thing. Its residual entering
each block is kept; a candidate in layer ``L`` is replayed from ``L`` only, with every removed
component at ``L`` or above ablated. When a candidate is removed, the replay that measured it
is the new circuit's run from ``L`` up: its recorded residuals replace the kept ones, so no
recapture costs anything. On an accelerator several candidates of a layer are stacked in one
replay, speculatively: in the first pass a candidate is assumed removed (the common case
there), later it is assumed kept (it survived before); copy ``j`` ablates the removed set, the
earlier candidates assumed removed, and candidate ``j``. Copies after the first wrong guess are
measured again. The decisions are those of one candidate at a time (a test holds them equal).

The task runs as one batch (the current circuit's run holds every block's residual for all its
prompts), not in ``engine.PROMPT_BATCH`` chunks as sweeps do: discovery is meant for the few
dozen prompts the paper uses.

With a distributed executor (``RunContext.executor``, ``--circuits-ray``) each threshold's
pruning runs as one job on the executor's workers (:class:`PruneJob`, :func:`run_prune`); the
result is the in-process one bit for bit on the same device type (``docs/scaling.md``).

Costs are counted in forward-pass equivalents (FE): blocks run, each stacked copy counted, over
the number of layers, plus the clean and reference runs. A discovery's first pass costs what an
exact sweep costs (each component replayed from its layer); the later passes visit only the
circuit's nodes (``benchmarks/bench_discovery.py`` measures the whole against an exact sweep).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import cache, progress
from ..components import Component, all_components
from ..config import context
from ..config.options import DEFAULT_MARGIN
from ..errors import GateConfigError, InvalidTaskError, NonFiniteError
from ..models import CircuitModel
from ..results.circuit import (
    CircuitEdge,
    CircuitResult,
    StabilityPoint,
    check_ablation,
    check_threshold,
    jaccard,
)
from . import engine
from .ablation import (
    default_ablations_per_forward,
    make_fingerprint,
    measure_task_performance,
    require_valid_task,
)

#: The paper's pruning threshold: a node is dropped while the rest keeps more than 80%.
DEFAULT_THRESHOLD = 0.20
#: The thresholds of the stability sweep (the issue's T list).
DEFAULT_STABILITY: tuple[float, ...] = (0.10, 0.15, 0.20, 0.25, 0.30)
#: An edge is kept when patching the sender's ablated output into the receiver alone leaves
#: less than this share of the circuit's logit difference.
EDGE_THRESHOLD = 0.8
#: Which components pruning may remove: every head and MLP, or the heads only (MLPs kept).
CANDIDATES = ("all", "heads")

__all__ = ["CANDIDATES", "DEFAULT_STABILITY", "DEFAULT_THRESHOLD", "EDGE_THRESHOLD",
           "backward_order", "check_ablation", "check_threshold", "circuit_result",
           "discover_circuit", "forward_order"]


# ----------------------------------------------------------------------------- arguments


def _check_stability(value: Any, where: str) -> tuple[float, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise GateConfigError(
            f"{where}: stability={value!r} must be a list of thresholds such as "
            f"{list(DEFAULT_STABILITY)}, or None for no stability sweep"
        )
    return tuple(dict.fromkeys(check_threshold(t, where, "a stability threshold")
                               for t in value))


def _check_candidates(value: Any, where: str) -> str:
    if value not in CANDIDATES:
        raise GateConfigError(
            f"{where}: candidates={value!r} is not one of {', '.join(map(repr, CANDIDATES))}; "
            "'all' prunes heads and MLPs (the paper's), 'heads' keeps every MLP"
        )
    return str(value)


# ----------------------------------------------------------------------------- orders


def backward_order(n_layers: int, n_heads: int) -> list[Component]:
    """Last layer to first; within a layer the MLP, then the heads in index order."""
    order: list[Component] = []
    for layer in reversed(range(n_layers)):
        order.append(Component.mlp_at(layer))
        order.extend(Component.head_at(layer, h) for h in range(n_heads))
    return order


def forward_order(n_layers: int, n_heads: int) -> list[Component]:
    """First layer to last; within a layer the heads in index order, then the MLP."""
    return all_components(n_layers, n_heads)


# ----------------------------------------------------------------------------- the pruner


class _Pruner:
    """The current circuit's run (the residual entering each block with every removed
    component ablated) and the replays that measure candidates on top of it."""

    def __init__(self, model: CircuitModel, task: Any, ablation: str, seed: int,
                 per_forward: int) -> None:
        self.model = model
        self.task = task
        self.ablation = ablation
        self.seed = seed
        self.per_forward = max(1, int(per_forward))
        self.tensors = engine.task_tensors(model, task)
        self.batch = self.tensors.n_prompts
        self.n_layers = int(model.n_layers)
        with torch.no_grad():
            run = engine.clean_run(model, task)
            if ablation != "zero":
                engine.reference(model, task)
        self.clean = run.capture
        self.full = float(run.logit_diff.double().mean())
        n_reference = int(self.tensors.corrupted.shape[0])
        #: forward-pass equivalents: the clean run, and the reference run for mean/resample
        self.cost_fe = 1.0 + (n_reference / self.batch if ablation != "zero" else 0.0)
        self._values: dict[Component, torch.Tensor | None] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the full model: nothing removed."""
        self.removed: list[Component] = []
        self.resid: list[torch.Tensor] = [r.detach() for r in self.clean.resid_pre]
        self.metric = self.full

    def value(self, component: Component) -> torch.Tensor | None:
        if component not in self._values:
            self._values[component] = engine.replacement(
                self.model, self.task, component, self.ablation, seed=self.seed)
        return self._values[component]

    def _hooks(self, edits: Sequence[tuple[int, int, Component]], reps: int
               ) -> list[tuple[str, Any]]:
        """Hooks that ablate ``component`` in stacked copies ``lo..hi-1`` for each edit."""
        by_hook: dict[str, list[tuple[int, int, Component, Any]]] = {}
        for lo, hi, comp in edits:
            by_hook.setdefault(engine.component_hook(comp, self.model), []).append(
                (lo, hi, comp, self.value(comp)))
        batch = self.batch
        hooks: list[tuple[str, Any]] = []
        for name, items in by_hook.items():

            def edit(act: torch.Tensor, hook: Any, items: Any = items) -> torch.Tensor:
                out = act.clone()
                view = out.view(reps, batch, *out.shape[1:])
                for lo, hi, comp, value in items:
                    target = view[lo:hi, :, :, comp.order] if comp.kind == "head" else view[lo:hi]
                    if value is None:
                        target.zero_()
                    else:
                        target.copy_(value.to(device=target.device, dtype=target.dtype)
                                     .expand_as(target))
                return out

            hooks.append((name, edit))
        return hooks

    def replay(self, layer: int, resid: torch.Tensor, edits: Sequence[tuple[int, int, Component]],
               reps: int, extra_hooks: Sequence[tuple[str, Any]] = (),
               ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Blocks ``layer..L-1`` from ``resid`` (stacked ``reps`` times) with ``edits``: the mean
        logit difference of each copy ([reps] float64) and the residual entering each block."""
        bridge = self.model.bridge
        hidden = resid if reps == 1 else resid.repeat(reps, *([1] * (resid.dim() - 1)))
        recorded: dict[int, torch.Tensor] = {}
        hooks = self._hooks(edits, reps) + list(extra_hooks)
        with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
            for index in range(layer, self.n_layers):
                recorded[index] = hidden
                hidden = engine._first(engine._run_block(self.model, self.clean, index, hidden,
                                                         reps))
            rows = engine._rows(hidden, self.tensors.positions)[:, 0]
            diffs = engine.head_logit_differences(self.model, rows, self.tensors.correct,
                                                  self.tensors.distractor)
        self.cost_fe += reps * (self.n_layers - layer) / self.n_layers
        means = diffs.view(reps, self.batch).double().mean(1).cpu()
        if not bool(torch.isfinite(means).all()):
            raise NonFiniteError(
                f"{self.model.name}: an ablated run on task {self.task.name!r} produced a "
                "non-finite logit difference (float16 overflow or corrupt weights); run in "
                "float32")
        return means, {i: r.detach() for i, r in recorded.items()}

    def measure(self, layer: int, candidates: Sequence[Component], assume_removed: Sequence[bool]
                ) -> tuple[list[float], dict[int, torch.Tensor]]:
        """Copy ``j`` ablates the removed set, the earlier candidates assumed removed, and
        ``candidates[j]``; every candidate sits in ``layer``."""
        k = len(candidates)
        edits = [(0, k, c) for c in self.removed if c.layer >= layer]
        for i, c in enumerate(candidates):
            edits.append((i, k if assume_removed[i] else i + 1, c))
        means, recorded = self.replay(layer, self.resid[layer], edits, k)
        return [float(m) for m in means], recorded

    def remove(self, component: Component, metric: float, recorded: dict[int, torch.Tensor],
               copy: int) -> None:
        self.removed.append(component)
        self.metric = metric
        b = self.batch
        for index, resid in recorded.items():
            if index > component.layer:
                self.resid[index] = resid[copy * b:(copy + 1) * b]

    def run_pass(self, order: Sequence[Component], keep: float, seen: set[Component],
                 evaluations: dict[Component, float]) -> int:
        """One pruning pass over the components of ``order`` still in the circuit; returns
        how many it removed. ``evaluations`` gets each kept candidate's ablated metric."""
        candidates = [c for c in order if c not in self.removed]
        removed = 0
        i = 0
        while i < len(candidates):
            layer = candidates[i].layer
            batch = [candidates[i]]
            while (len(batch) < self.per_forward and i + len(batch) < len(candidates)
                   and candidates[i + len(batch)].layer == layer):
                batch.append(candidates[i + len(batch)])
            assume = [c not in seen for c in batch]
            metrics, recorded = self.measure(layer, batch, assume)
            consumed = 0
            for j, (comp, metric) in enumerate(zip(batch, metrics, strict=True)):
                seen.add(comp)
                consumed = j + 1
                dropped = metric > keep
                if dropped:
                    self.remove(comp, metric, recorded, j)
                    evaluations.pop(comp, None)
                    removed += 1
                else:
                    evaluations[comp] = metric
                if dropped != assume[j]:
                    break  # the later copies assumed otherwise: measure them again
            i += consumed
            progress.report(self.model.name, i, len(candidates))
        return removed

    def prune(self, threshold: float, candidates: Sequence[Component]
              ) -> tuple[list[Component], dict[Component, float], int]:
        """Prune from the full model at ``threshold``: the circuit, each circuit node's metric
        when it alone is removed as well, and the number of passes."""
        self.reset()
        keep = (1.0 - threshold) * self.full
        allowed = set(candidates)
        orders = [
            [c for c in backward_order(self.n_layers, int(self.model.n_heads)) if c in allowed],
            [c for c in forward_order(self.n_layers, int(self.model.n_heads)) if c in allowed],
        ]
        seen: set[Component] = set()
        evaluations: dict[Component, float] = {}
        passes = 0
        while True:
            removed = self.run_pass(orders[passes % 2], keep, seen, evaluations)
            passes += 1
            if removed == 0:
                break
        gone = set(self.removed)
        circuit = [c for c in all_components(self.n_layers, int(self.model.n_heads))
                   if c not in gone]
        return circuit, {c: evaluations[c] for c in circuit if c in evaluations}, passes

    def ablated_from_clean(self, components: Sequence[Component]) -> float:
        """The mean logit difference with ``components`` ablated and everything else kept."""
        if not components:
            return self.full
        layer = min(c.layer for c in components)
        means, _ = self.replay(layer, self.clean.resid_pre[layer].detach(),
                               [(0, 1, c) for c in components], 1)
        return float(means[0])


# ----------------------------------------------------------------------------- edges


def _edges(pruner: _Pruner, circuit: Sequence[Component]) -> tuple[CircuitEdge, ...]:
    """Path patching within the node circuit (on the circuit's own run: everything outside it
    ablated). For each sender and each later receiver (a head's q/k/v input, an MLP's input,
    the final residual "logits"), the sender's ablated output replaces its output on the path
    into that receiver only; the score is the patched logit difference over the circuit's."""
    model = pruner.model
    parts = engine._block_parts(model)
    layout = model.family_entry.layout
    if parts is None or layout is None:
        raise GateConfigError(
            f"{model.name}: edges need the family's BlockLayout, which "
            f"{model.family_entry.family} does not declare; pass edges=False")
    n = pruner.n_layers
    b = pruner.batch
    base = pruner.metric
    removed_edits = [(0, 1, c) for c in pruner.removed]
    # the circuit's run, with every z and MLP output it computes
    seen: dict[str, torch.Tensor] = {}

    def saver(name: str) -> Any:
        def save(act: torch.Tensor, hook: Any) -> None:
            seen[name] = act.detach()
        return save

    names = engine.replay_cache_names(model)
    final_key = "final"

    def final_saver(module: Any, args: Any, output: Any) -> None:
        seen[final_key] = engine._first(output).detach()

    handle = model.bridge.blocks[n - 1].register_forward_hook(final_saver)
    try:
        _, resid = pruner.replay(0, pruner.clean.resid_pre[0].detach(), removed_edits, 1,
                                 [(name, saver(name)) for name in names])
    finally:
        handle.remove()

    def delta(sender: Component) -> torch.Tensor:
        part = parts[sender.layer]
        value = pruner.value(sender)
        if sender.kind == "head":
            z = seen[engine.z_hook(sender.layer, model)]
            ablated = z.clone()
            target = ablated[:, :, sender.order]
            if value is None:
                target.zero_()
            else:
                target.copy_(value.to(target.dtype).expand_as(target))
            with torch.no_grad():
                return (engine._first(part.attn_output(engine._merge_heads(ablated)))
                        - engine._first(part.attn_output(engine._merge_heads(z))))
        out = seen[engine.mlp_out_hook(sender.layer, model)]
        replaced = torch.zeros_like(out) if value is None else value.to(out.dtype).expand_as(out)
        return replaced - out

    def score_head(receiver: Component, shift: torch.Tensor) -> float:
        layer = receiver.layer
        z_name = engine.z_hook(layer, model)
        captured: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> None:
            captured["z"] = act.detach()

        layer_edits = [(0, 1, c) for c in pruner.removed if c.layer == layer]
        with torch.no_grad(), model.bridge.hooks(
                fwd_hooks=pruner._hooks(layer_edits, 1) + [(z_name, grab)]):
            engine._run_block(model, pruner.clean, layer, resid[layer] + shift, 1)
        pruner.cost_fe += 1 / n
        patched = captured["z"][:, :, receiver.order]

        def put(act: torch.Tensor, hook: Any) -> torch.Tensor:
            out = act.clone()
            out[:, :, receiver.order] = patched
            return out

        means, _ = pruner.replay(layer, resid[layer],
                                 [(0, 1, c) for c in pruner.removed if c.layer >= layer], 1,
                                 [(z_name, put)])
        return float(means[0])

    def score_mlp(receiver: Component, shift: torch.Tensor) -> float:
        layer = receiver.layer
        part = parts[layer]
        z = seen[engine.z_hook(layer, model)]
        with torch.no_grad():
            mid = engine._after_attention(layout, part, resid[layer], engine._merge_heads(z))
            patched = engine._mlp_out(layout, part, mid + shift)

        def put(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return patched.to(act.dtype)

        means, _ = pruner.replay(layer, resid[layer],
                                 [(0, 1, c) for c in pruner.removed if c.layer >= layer], 1,
                                 [(engine.mlp_out_hook(layer, model), put)])
        return float(means[0])

    def score_logits(shift: torch.Tensor) -> float:
        hidden = seen[final_key] + shift
        with torch.no_grad():
            rows = engine._rows(hidden, pruner.tensors.positions)[:, 0]
            diffs = engine.head_logit_differences(model, rows, pruner.tensors.correct,
                                                  pruner.tensors.distractor)
        return float(diffs.view(1, b).double().mean())

    edges: list[CircuitEdge] = []
    for sender in circuit:
        shift = delta(sender)
        receivers: list[Component | None] = [
            r for r in circuit
            if r.layer > sender.layer or (r.layer == sender.layer and r.kind == "mlp"
                                          and sender.kind == "head")]
        receivers.append(None)
        for receiver in receivers:
            if receiver is None:
                metric = score_logits(shift)
            elif receiver.kind == "head":
                metric = score_head(receiver, shift)
            else:
                metric = score_mlp(receiver, shift)
            score = metric / base if base != 0 else float("nan")
            if score < EDGE_THRESHOLD:
                edges.append(CircuitEdge(sender.name, "logits" if receiver is None
                                         else receiver.name, score))
    return tuple(edges)


# ----------------------------------------------------------------------------- distributed runs


@dataclass(frozen=True)
class PruneJob:
    """One pruning of a discovery, the unit a distributed executor (``RunContext.executor``)
    ships to a worker: prune the full model over ``pool`` at ``threshold``. The discovery's own
    threshold (``main``) also measures what the in-process discovery measures right after its
    prune, on the same circuit's run: the circuit nodes pruning never visited, and the
    complement. :func:`run_prune` is what the worker runs."""

    threshold: float
    pool: tuple[Component, ...]
    ablation: str
    seed: int
    per_forward: int
    main: bool = False


@dataclass(frozen=True)
class PruneOutcome:
    """What a :class:`PruneJob` found. ``costs``: the FE of each replay, in the order they ran
    (the driver adds them in the in-process order, so ``cost_fe`` is the same float)."""

    removed: tuple[Component, ...]  # in the order pruning removed them
    circuit: tuple[Component, ...]
    metric: float
    evaluations: tuple[tuple[Component, float], ...]
    passes: int
    costs: tuple[float, ...]
    unvisited: tuple[tuple[Component, float], ...] = ()
    complement: float = float("nan")  # measured by the main job only
    complement_costs: tuple[float, ...] = ()


class _CountingPruner(_Pruner):
    """A :class:`_Pruner` that also logs each replay's cost (a worker's: see :class:`PruneJob`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.costs: list[float] = []

    def replay(self, layer: int, resid: torch.Tensor, edits: Sequence[tuple[int, int, Component]],
               reps: int, extra_hooks: Sequence[tuple[str, Any]] = (),
               ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        self.costs.append(reps * (self.n_layers - layer) / self.n_layers)  # what replay adds
        return super().replay(layer, resid, edits, reps, extra_hooks)


def run_prune(model: CircuitModel, task: Any, job: PruneJob) -> PruneOutcome:
    """``job`` on this process's copy of ``model``: the same replays, in the same order, as the
    in-process discovery runs for that threshold (so the same decisions and bits on the same
    device type)."""
    pruner = _CountingPruner(model, task, job.ablation, job.seed, job.per_forward)
    circuit, evaluations, passes = pruner.prune(job.threshold, job.pool)
    outcome = PruneOutcome(removed=tuple(pruner.removed), circuit=tuple(circuit),
                           metric=pruner.metric, evaluations=tuple(evaluations.items()),
                           passes=passes, costs=())
    if not job.main:
        return dataclasses.replace(outcome, costs=tuple(pruner.costs))
    unvisited = []
    for c in circuit:
        if c not in evaluations:
            metric, _ = pruner.measure(c.layer, [c], [False])
            unvisited.append((c, metric[0]))
    costs = tuple(pruner.costs)
    pruner.costs.clear()
    complement = pruner.ablated_from_clean(circuit)
    return dataclasses.replace(outcome, costs=costs, unvisited=tuple(unvisited),
                               complement=complement, complement_costs=tuple(pruner.costs))


#: How a distributed executor names these jobs in its errors.
run_prune.job_label = "circuit discovery"  # type: ignore[attr-defined]


def _sharded_prunes(executor: Any, pruner: _Pruner, pool: Sequence[Component], threshold: float,
                    thresholds: Sequence[float]) -> tuple[
                        dict[float, tuple[list[Component], float]], list[Component], float,
                        dict[str, float], int, tuple[float, ...], float]:
    """The prunes of :func:`discover_circuit` (each stability threshold and its own) as
    parallel jobs on ``executor``, merged as the in-process discovery computes them: the
    stability points, the circuit, its metric, the node drops, the passes, the complement's
    replay costs and the complement. ``pruner`` (the driver's) gets every prune's costs in the
    in-process order, and the circuit's removed set and metric (what the edges read)."""
    common = {"pool": tuple(pool), "ablation": pruner.ablation, "seed": pruner.seed,
              "per_forward": pruner.per_forward}
    levels = [level for level in thresholds if level != threshold]
    # the discovery's own threshold first: it measures the most, so it should start first
    jobs = [PruneJob(threshold, main=True, **common)] + [PruneJob(level, **common)
                                                          for level in levels]
    outcomes: list[PruneOutcome] = executor.map(run_prune, pruner.model, pruner.task, jobs,
                                                weights=[len(pool)] * len(jobs))
    main, others = outcomes[0], outcomes[1:]
    points: dict[float, tuple[list[Component], float]] = {}
    for level, outcome in zip(levels, others, strict=True):
        for cost in outcome.costs:
            pruner.cost_fe += cost
        points[level] = (list(outcome.circuit), outcome.metric)
    for cost in main.costs:
        pruner.cost_fe += cost
    pruner.removed = list(main.removed)
    pruner.metric = main.metric
    circuit, circuit_metric, full = list(main.circuit), main.metric, pruner.full
    evaluations = dict(main.evaluations)
    drops = {c.name: 100.0 * (circuit_metric - evaluations[c]) / full
             for c in circuit if c in evaluations}
    for c, metric in main.unvisited:
        drops[c.name] = 100.0 * (circuit_metric - metric) / full
    return (points, circuit, circuit_metric, drops, main.passes, main.complement_costs,
            main.complement)


# ----------------------------------------------------------------------------- public API


def discover_circuit(
    model: CircuitModel,
    task: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ablation: str = "mean",
    seed: int = 0,
    edges: bool = False,
    stability: Sequence[float] | None = DEFAULT_STABILITY,
    candidates: str = "all",
    margin: float | None = DEFAULT_MARGIN,
    ablations_per_forward: int | None = None,
) -> CircuitResult:
    """The circuit of ``model`` on ``task`` by iterative node pruning (see the module doc).

    ``threshold`` T: a node is removed while the rest keeps more than ``1 - T`` of the full
    model's logit difference. ``ablation``: how a removed node is ablated ("mean" over the
    task's corrupted reference prompts, "zero", "resample" with ``seed``). ``stability``: the
    thresholds of the stability sweep (None: none). ``edges``: path-patch the edges within the
    node circuit. ``candidates``: "all" (heads and MLPs) or "heads" (every MLP kept).
    ``margin``: the clean logit difference the model must exceed (None: no check, research
    only). ``ablations_per_forward``: candidates stacked per replay (default: 1 on CPU, a
    layer's worth on an accelerator). Faithfulness and completeness are defined on
    :class:`~pytest_circuits.results.CircuitResult`.
    """
    where = "discover_circuit"
    threshold = check_threshold(threshold, where)
    ablation = check_ablation(ablation, where)
    thresholds = _check_stability(stability, where)
    candidates = _check_candidates(candidates, where)
    if ablations_per_forward is not None and (
            isinstance(ablations_per_forward, bool) or not isinstance(ablations_per_forward, int)
            or ablations_per_forward < 1):
        raise GateConfigError(f"{where}: ablations_per_forward={ablations_per_forward!r} must "
                              "be a whole number >= 1 (candidates stacked per replay)")
    from .store import as_task

    task = as_task(task, None, seed, model)
    started = time.perf_counter()
    performance = measure_task_performance(model, task)
    require_valid_task([performance], margin=margin)
    if not performance.mean_logit_diff > 0:
        raise InvalidTaskError(
            f"{model.name}: the clean logit difference on task '{task.name}' is "
            f"{performance.mean_logit_diff:.4f}; pruning keeps a share of it, which means "
            "nothing unless it is positive: use a task the model performs")
    per_forward = ablations_per_forward or default_ablations_per_forward(model)
    pruner = _Pruner(model, task, ablation, seed, per_forward)
    pool = all_components(int(model.n_layers), int(model.n_heads),
                          "all" if candidates == "all" else "heads")

    executor = context.current().executor
    if executor is not None:  # a distributed run: the thresholds' prunes run as parallel jobs
        sharded = _sharded_prunes(executor, pruner, pool, threshold, thresholds)
        points, circuit, circuit_metric, drops, passes, complement_costs, complement = sharded
        full = pruner.full
    else:
        points = {}
        for level in thresholds:
            if level == threshold:
                continue
            found, _, _ = pruner.prune(level, pool)
            points[level] = (found, pruner.metric)
        circuit, evaluations, passes = pruner.prune(threshold, pool)
        circuit_metric = pruner.metric
        full = pruner.full
        drops = {c.name: 100.0 * (circuit_metric - evaluations[c]) / full
                 for c in circuit if c in evaluations}
        # nodes pruning never visited (MLPs under candidates="heads"): measured now
        for c in circuit:
            if c.name not in drops:
                metric, _ = pruner.measure(c.layer, [c], [False])
                drops[c.name] = 100.0 * (circuit_metric - metric[0]) / full
    names = [c.name for c in circuit]
    points[threshold] = (circuit, circuit_metric)
    stable = tuple(
        StabilityPoint(threshold=level, nodes=tuple(c.name for c in points[level][0]),
                       faithfulness=points[level][1] / full,
                       jaccard=jaccard([c.name for c in points[level][0]], names))
        for level in thresholds
    )
    found_edges = _edges(pruner, circuit) if edges else None
    if executor is None:
        complement = pruner.ablated_from_clean(circuit)
    else:  # measured on the actor that pruned; its cost counted after the edges', as here
        for cost in complement_costs:
            pruner.cost_fe += cost
    fingerprint = make_fingerprint(model, task, analysis="circuit", ablation=ablation,
                                   method="prune", seed=seed).to_dict()
    fingerprint["candidates"] = candidates
    return CircuitResult(
        model=model.name,
        task=task.name,
        threshold=threshold,
        ablation=ablation,
        seed=seed,
        nodes=tuple(names),
        full_logit_diff=full,
        circuit_logit_diff=circuit_metric,
        complement_logit_diff=complement,
        node_drops=drops,
        n_layers=int(model.n_layers),
        n_heads_per_layer=int(model.n_heads),
        cost_fe=pruner.cost_fe,
        passes=passes,
        stability=stable,
        edges=found_edges,
        wall_seconds=time.perf_counter() - started,
        fingerprint=fingerprint,
    )


def circuit_result(
    model: CircuitModel,
    task: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ablation: str = "mean",
    seed: int = 0,
    edges: bool = False,
    stability: Sequence[float] | None = DEFAULT_STABILITY,
    candidates: str = "all",
    margin: float | None = DEFAULT_MARGIN,
) -> CircuitResult:
    """:func:`discover_circuit` through the session/disk cache (kind "circuit", keyed by the
    model's content, the task and every option that changes the circuit), named as ``model``
    is. The margin is checked on every call, not keyed (it changes no number)."""
    from .store import as_task, model_parts, task_performance

    where = "circuit_result"
    threshold = check_threshold(threshold, where)
    ablation = check_ablation(ablation, where)
    levels = _check_stability(stability, where)
    candidates = _check_candidates(candidates, where)
    task = as_task(task, None, seed, model)
    require_valid_task([task_performance(model, task)], margin=margin)
    parts = {**model_parts(model, task), "threshold": threshold, "ablation": ablation,
             "seed": seed, "edges": bool(edges), "stability": list(levels),
             "candidates": candidates}
    result = cache.cached("circuit", parts, lambda: discover_circuit(
        model, task, threshold=threshold, ablation=ablation, seed=seed, edges=edges,
        stability=levels or None, candidates=candidates, margin=margin))
    if result.model != model.name:
        result = dataclasses.replace(result, model=model.name)
    return result
