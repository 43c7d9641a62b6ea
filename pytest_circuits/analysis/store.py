"""A model's sweeps and clean runs, memoised per session and on disk.

A sweep is keyed by the model's content (weights fingerprint and tokenizer digest, never its
name or path), the task and the sweep's own options (components, ablation, method, seed, and
for an auto sweep the cut points it decides exactly), so every gate, pair and direct call in a
session shares one: the teacher is swept once however many students, files and gates name it,
under whatever name or path. What leaves the cache is relabelled with the asking model's own
name and source (:func:`relabelled`). A subset of components is read from an exact sweep of
all of them; an exact subset of at least half the components is swept as a full sweep, so a
later gate on every component finds it. ``compare``, ``model_report`` and every gate obtain
sweeps here.

The sweep algorithm is ``options.method``: "exact", "auto" (screened, then exact wherever a
verdict against ``options.thresholds`` could depend on the value) or None, which picks "auto"
where its predicted cost is below the exact sweep's (:func:`sweep_costs`) or for a model of at
least ``config.options.AUTO_MIN_COMPONENTS`` components, and "exact" otherwise.
An auto sweep's key holds its thresholds, so one made for other thresholds is never served to a
gate whose verdict it could not decide; an exact sweep already stored serves an auto request (it
decides every verdict), so a model is never swept twice for one task and settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import cache
from ..components import select_components
from ..config import options as defaults
from ..config.options import AnalysisOptions, GateThresholds
from ..models import ModelPair, load_pair
from ..tasks import DEFAULT_N_PROMPTS, resolve_task
from . import ablation, bounds

#: What a direct call of the analysis layer measures by default: every component exactly.
EXACT = AnalysisOptions(method="exact")


def analysis_options(where: str, options: AnalysisOptions | None,
                     overrides: dict[str, Any]) -> AnalysisOptions:
    """``options`` (default :data:`EXACT`) with the keyword ``overrides`` a caller passed,
    validated once and named as coming from ``where``."""
    if options is not None and not isinstance(options, AnalysisOptions):
        raise TypeError(f"{where}: options must be an AnalysisOptions, got "
                        f"{type(options).__name__}")
    if not overrides and options is not None:
        return options
    return AnalysisOptions.of(where, options or EXACT, **overrides)


def as_pair(pair: Any) -> Any:

    if isinstance(pair, ModelPair):
        return pair
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        return load_pair(pair[0], pair[1])
    raise TypeError(
        f"expected a ModelPair (the circuit_pair fixture or load_pair(teacher, student)), got "
        f"{type(pair).__name__}"
    )


def as_task(task: Any, n_prompts: int | None, seed: int | None, model: Any = None) -> Any:
    """Resolve what a user wrote into a Task, once, at the edge.

    A built-in name is built to fit ``model``'s tokenizer and kind (causal or masked) when a
    model is given (for a pair: the teacher; both share a vocabulary). ``n_prompts=None``
    means the default; 0 or a negative count is refused by ``resolve_task``, never replaced.
    """
    return resolve_task(
        task,
        n_prompts=DEFAULT_N_PROMPTS if n_prompts is None else n_prompts,
        seed=0 if seed is None else seed,
        tokenizer=getattr(model, "tokenizer", None),
        kind=getattr(model, "kind", None),
    )


def model_parts(model: Any, task: Any) -> dict[str, Any]:
    """What identifies a model's run of a task: its weights and tokenizer, how it computes, the
    task. Never its name or path: one model loaded under two names or from two spellings of a
    path shares every entry (see :func:`relabelled`)."""
    return {
        "model": model.weights_fingerprint,
        "tokenizer": model.tokenizer_digest,
        "task": task.fingerprint(),
        "dtype": model.dtype,
        "device": model.device_kind,
    }


def n_components(model: Any) -> int:
    """How many components (heads plus MLPs) a full sweep of ``model`` ablates."""
    return int(model.n_layers) * (int(model.n_heads) + 1)


def sweep_costs(n_layers: int, n_heads: int, n_prompts: int | None = None, *,
                compare: bool = False) -> tuple[float, float]:
    """Predicted forward-pass equivalents of a full sweep of a model of ``n_layers`` layers and
    ``n_heads`` heads on ``n_prompts`` prompts (default: the built-in tasks'): (exact, auto).

    A value of layer ``l`` costs a replay of the blocks from ``l`` up, ``(L - l) / L`` FE, so
    the exact sweep costs ``(n_heads + 1)`` of them per layer. Auto costs its screen
    (``AUTO_SCREEN_FE``), its calibration (a joint replay of each layer's heads and one of each
    MLP, on ``AUTO_SAMPLE_PROMPTS`` of the prompts for a deep model, every MLP measured and the
    joint replays on every prompt for a shallow one) and ``AUTO_CONFIRMED_SHARE`` of the
    components (at least ``AUTO_CONFIRMED_MIN``) measured exactly at the mean replay's cost
    (see ``config.options``); for a comparison (``compare``), whose floors and weighted score
    read most values, ``AUTO_COMPARE_CONFIRMED_SHARE`` of them."""
    layers = max(int(n_layers), 1)
    replays = [(layers - layer) / layers for layer in range(layers)]
    per_layer = sum(replays)
    exact = (int(n_heads) + 1) * per_layer
    prompts = DEFAULT_N_PROMPTS if n_prompts is None else max(int(n_prompts), 1)
    sampled = (layers >= defaults.AUTO_SAMPLE_MIN_LAYERS
               and prompts >= 2 * defaults.AUTO_SAMPLE_PROMPTS)
    calibration = 2 * per_layer * (defaults.AUTO_SAMPLE_PROMPTS / prompts if sampled else 1.0)
    mean_replay = per_layer / layers
    components = layers * (int(n_heads) + 1)
    share = defaults.AUTO_COMPARE_CONFIRMED_SHARE if compare else defaults.AUTO_CONFIRMED_SHARE
    confirmed = min(max(defaults.AUTO_CONFIRMED_MIN, share * components),
                    components) * mean_replay
    return exact, defaults.AUTO_SCREEN_FE + calibration + confirmed


def default_method(model: Any, n_prompts: int | None = None, *, compare: bool = False) -> str:
    """The sweep algorithm for ``method=None``: "auto" where its predicted cost is below the
    exact sweep's (:func:`sweep_costs`; ``compare``: for a comparison, which reads most
    values) or from ``AUTO_MIN_COMPONENTS`` components on (both read at call time, so a test
    may change them), else "exact"."""
    if n_components(model) >= defaults.AUTO_MIN_COMPONENTS:
        return "auto"
    exact, auto = sweep_costs(model.n_layers, model.n_heads, n_prompts, compare=compare)
    return "auto" if auto < exact else "exact"


def auto_thresholds(options: AnalysisOptions, drop: Any = ()) -> GateThresholds:
    """The cut points an auto sweep for ``options`` decides exactly: its thresholds (default:
    the default tolerance and top 5) plus the extra single-component levels ``drop``."""
    return (options.thresholds or GateThresholds()).with_drops(drop)


class _Absent(Exception):
    """Raised by the compute function of :func:`_stored`: nothing is stored under the key."""


def _stored(kind: str, parts: dict[str, Any]) -> Any:
    """The entry stored (in this session or on disk) under ``parts``, None when there is none;
    nothing is computed."""

    def absent() -> Any:
        raise _Absent

    try:
        return cache.cached(kind, parts, absent)
    except _Absent:
        return None


def task_performance(model: Any, task: Any) -> Any:
    """The clean run's metric (``ablation.measure_task_performance``) through the session/disk
    cache, named as ``model`` is."""
    performance = cache.cached("performance", model_parts(model, task),
                               lambda: ablation.measure_task_performance(model, task))
    return _renamed_performance(performance, model.name)


def _renamed_performance(performance: Any, name: str) -> Any:
    if performance.model == name:
        return performance
    return dataclasses.replace(performance, model=name)


def relabelled(result: Any, model: Any) -> Any:
    """``result`` (a SweepResult or ModelReport from the cache) as ``model``'s own: the cache is
    keyed by content, so a result measured on the same weights and tokenizer under another name
    or path is served with ``model``'s name and source (the numbers are the same). Only the
    model descriptions are replaced; the effects and statistics are shared, not copied."""
    own = model.describe()
    info = result.model
    if info.name == own.name and info.source == own.source:
        return result
    renamed = {"model": dataclasses.replace(info, name=own.name, source=own.source),
               "performance": _renamed_performance(result.performance, own.name)}
    if hasattr(result, "sweep"):  # a ModelReport: its sweep names the model too
        renamed["sweep"] = relabelled(result.sweep, model)
    return dataclasses.replace(result, **renamed)


def sweep_result(model: Any, task: Any, options: AnalysisOptions | None = None,
                 **overrides: Any) -> Any:
    """``ablation.sweep`` through the session/disk cache: one sweep per weights, task and
    sweep options (keyword arguments are :class:`AnalysisOptions` fields; default exact).

    An exact sweep already stored for the same model, task and settings is returned for an
    auto request (its ``fingerprint.method`` says "exact"). An auto sweep is made once per
    model, task and settings, for the first ``thresholds`` asked; a later request with other
    thresholds gets the same sweep with the estimates those thresholds need measured exactly
    (``bounds.threshold_needs``, :func:`settle_sweep`), so every gate on a model shares one
    screen. The margin is not part of the key: it does not change a sweep's numbers, only
    whether the task is valid for the model, and that is checked again on every call, so a
    stored sweep is never served to a caller whose margin refuses the task.
    """
    options = analysis_options("sweep_result", options, overrides)
    method = options.method or default_method(model)
    parts = _full_parts(model, task, options, method)
    result = None
    if options.components != "all":
        # a subset is read from an exact sweep of every component when one is stored: each
        # component's single ablation is measured the same way whatever else is swept
        result = _subset_of_stored(model, task, options)
        everything = options.replace(components="all")
        if result is None and (_mostly_all(model, options.components) or (
                method == "auto" and _stored("sweep", _full_parts(model, task, everything,
                                                                   method)) is not None)):
            # sweep every component instead (at most twice the work, usually a tenth more),
            # so the gates that read all of them later find the sweep stored
            full = sweep_result(model, task, everything)
            result = _subset_of(full, model, options.components)
            thresholds = auto_thresholds(options)
            # the subset's own top-k and levels, until none is open
            while method == "auto" and (need := bounds.threshold_needs(result, thresholds)):
                full = settle_sweep(model, task, everything, need, base=full)
                result = _subset_of(full, model, options.components)
    if result is None and method == "auto":
        # an exact sweep decides every verdict: one already stored is never swept again
        result = _stored("sweep", {**parts, "method": "exact"})
        if result is None:
            result = _auto_sweep(model, task, options, parts)
    if result is None:
        # exact values an auto sweep of the same weights, task and settings measured in this
        # session: an exact sweep (a gate settling its verdict) replays only the rest
        measured = _session_memory().get(_partial_key(parts))
        result = cache.cached(
            "sweep",
            parts,
            lambda: ablation.sweep(
                model, task, components=_selection(options.components),
                ablation=options.ablation, method=method, seed=options.seed,
                margin=options.margin, measured=measured,
            ),
        )
    result = relabelled(result, model)
    ablation.require_valid_task([result.performance], margin=options.margin)
    return result


def _full_parts(model: Any, task: Any, options: AnalysisOptions, method: str) -> dict[str, Any]:
    return {**model_parts(model, task), **options.key(("components", "ablation", "seed")),
            "method": method}


def _auto_sweep(model: Any, task: Any, options: AnalysisOptions, parts: dict[str, Any]) -> Any:
    """The model's one auto sweep for these settings: made for ``options.thresholds`` when
    none is stored, else the stored one with what those thresholds need settled."""
    thresholds = auto_thresholds(options)
    stored = _stored("sweep", parts)
    if stored is None:
        stored = cache.cached("sweep", parts, lambda: ablation.sweep(
            model, task, components=_selection(options.components), ablation=options.ablation,
            method="auto", seed=options.seed, margin=options.margin, thresholds=thresholds,
        ))
    else:  # each round measures at least one estimate, so this ends
        while need := bounds.threshold_needs(stored, thresholds):
            stored = _settle_stored(model, task, options, parts, stored, need)
    _session_memory()[_partial_key(parts)] = stored
    return stored


def _settle_stored(model: Any, task: Any, options: AnalysisOptions, parts: dict[str, Any],
                   stored: Any, names: Any) -> Any:
    """``stored`` (the auto sweep under ``parts``) with ``names`` measured exactly, stored back
    in its place. A measured value outside its estimate's band means the screen's error rates
    were too low for this model, so no remaining band is trusted: every estimate is measured."""
    settled = ablation.settle(model, task, stored, sorted(names), ablation=options.ablation,
                              seed=options.seed)
    before = {e.name: e for e in stored.effects}
    missed = [e.name for e in settled.effects if e.name in names and not before[e.name].is_exact
              and before[e.name].bound is not None
              and abs(e.drop - before[e.name].drop) > before[e.name].bound]
    if missed and settled.estimated_names:
        settled = ablation.settle(model, task, settled, settled.estimated_names,
                                  ablation=options.ablation, seed=options.seed)
    # another process (an xdist worker) may have settled other values of the same sweep since
    # this one read it: exact values are the same whoever measured them, so keep them all
    settled = _with_exact_of(settled, cache.on_disk("sweep", parts))
    cache.replace("sweep", parts, settled)
    _session_memory()[_partial_key(parts)] = settled
    return settled


def _with_exact_of(sweep: Any, other: Any) -> Any:
    """``sweep`` with every value ``other`` (the same sweep, as another process stored it, or
    None) holds exactly and ``sweep`` does not. A sweep whose bands another process stopped
    trusting (all exact there) stays all exact here."""
    if other is None or [e.name for e in other.effects] != [e.name for e in sweep.effects]:
        return sweep
    theirs = {e.name: e for e in other.effects if e.is_exact}
    if not any(not e.is_exact and e.name in theirs for e in sweep.effects):
        return sweep
    return dataclasses.replace(sweep, effects=[
        theirs[e.name] if not e.is_exact and e.name in theirs else e for e in sweep.effects])


def _partial_key(parts: dict[str, Any]) -> tuple[str, str]:
    """Where the session keeps the latest auto sweep of a model, task and settings: an exact
    sweep of the same settings reuses what it measured exactly."""
    base = {k: v for k, v in parts.items() if k not in ("method", "thresholds")}
    return ("auto-measured", cache.cache_key("sweep", base))


def _session_memory() -> dict[Any, Any]:
    session = cache.store()
    return session.memory if session.enabled else {}


def settle_sweep(model: Any, task: Any, options: AnalysisOptions, names: Any, *,
                 base: Any = None) -> Any:
    """The model's auto sweep for ``options`` (of every component), with the estimates named in
    ``names`` measured exactly (``ablation.settle``: each as a full exact sweep measures it),
    stored back in its place in the session and on disk, so every later gate, pair and warm run
    reads the settled values, and an exact sweep of the same settings replays only what is
    still estimated. A sweep without estimates among ``names`` is returned as it is. ``base``:
    the sweep the caller holds (what is settled when caching is off and nothing is stored)."""
    options = options.replace(components="all")
    parts = _full_parts(model, task, options, "auto")
    stored = _stored("sweep", parts)
    if stored is None:
        # caching off (or an exact sweep served the request): settle the caller's own sweep,
        # never a fresh screen, which would lose what earlier rounds measured
        current = base if base is not None else sweep_result(model, task, options)
        wanted = set(names)
        if not any(e.name in wanted and not e.is_exact for e in current.effects):
            return current
        return relabelled(ablation.settle(model, task, current, sorted(wanted),
                                          ablation=options.ablation, seed=options.seed), model)
    if not any(e.name in set(names) and not e.is_exact for e in stored.effects):
        return relabelled(stored, model)
    return relabelled(_settle_stored(model, task, options, parts, stored, set(names)), model)


def _subset_of_stored(model: Any, task: Any, options: AnalysisOptions) -> Any:
    """The components ``options`` selects, from an exact sweep of all of them already stored
    (this session or on disk), in the selection's order; None when none is stored."""
    full = _stored("sweep", {**model_parts(model, task),
                             **options.replace(components="all").key(
                                 ("components", "ablation", "seed")),
                             "method": "exact"})
    if full is None:
        return None
    return _subset_of(full, model, options.components)


def _subset_of(full: Any, model: Any, components: str | tuple[str, ...]) -> Any:
    """The effects of ``full`` (a sweep of every component) that ``components`` selects."""
    chosen = _chosen(model, components)
    by_name = {e.name: e for e in full.effects}
    return dataclasses.replace(full, effects=[by_name[c.name] for c in chosen])


def _chosen(model: Any, components: str | tuple[str, ...]) -> Any:
    return select_components(_selection(components), int(model.n_layers), int(model.n_heads),
                             model_name=model.name)


def _mostly_all(model: Any, components: str | tuple[str, ...]) -> bool:
    """Whether ``components`` selects at least half of the model's components."""
    return 2 * len(_chosen(model, components)) >= n_components(model)


def _selection(components: str | tuple[str, ...]) -> str | list[str]:
    return components if isinstance(components, str) else list(components)
