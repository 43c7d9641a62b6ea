"""Reports built from numbers, without a model: a SmolLM2-sized pair (30 layers x 9 heads plus
30 MLPs, 300 components), a copy of it and a depth-pruned student, for the HTML report's and
``diff``'s handling of large and differently deep models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pytest_circuits import metrics
from pytest_circuits.analysis.comparison import (
    Alignment,
    CompareSettings,
    MatchedPair,
    ModelReport,
    PairReport,
    find_discarded,
)
from pytest_circuits.identity import ModelInfo
from pytest_circuits.results import ComponentEffect, MethodFingerprint, SweepResult, TaskPerformance

TASK = "ioi"
FINGERPRINT = MethodFingerprint(
    analysis="compare", ablation="mean", method="exact", task=TASK, task_sha256="0" * 64,
    n_prompts=16, n_reference=16, seed=0, dtype="float32", similarity="paper",
    matching="paper", direction="teacher_to_student")


def names(layer: int, n_heads: int) -> list[str]:
    return [f"L{layer}H{h}" for h in range(n_heads)] + [f"MLP{layer}"]


def model_report(name: str, drops: Sequence[Sequence[float]], *, n_params: int = 134_515_008,
                 pruned: tuple[str, ...] | None = (), clean: float = 4.0) -> ModelReport:
    """A model whose component ``[layer][i]`` (heads, then the MLP) costs ``drops[layer][i]``
    points when ablated."""
    n_layers, n_heads = len(drops), len(drops[0]) - 1
    info = ModelInfo(name=name, source=name, architecture="LlamaForCausalLM", kind="causal",
                     n_layers=n_layers, n_heads=n_heads, d_head=64, d_model=576,
                     n_params=n_params, dtype="float32", device_kind="cpu", processing="raw",
                     weights_sha256="0" * 64, family="llama", n_kv_heads=3)
    performance = TaskPerformance(name, TASK, clean, (clean,) * 16, 1.0, 1.0)
    effects = []
    for layer, row in enumerate(drops):
        for i, (component, drop) in enumerate(zip(names(layer, n_heads), row, strict=True)):
            kept = 100.0 - float(drop)
            effects.append(ComponentEffect(
                name=component, kind="mlp" if i == n_heads else "head", layer=layer,
                head=None if i == n_heads else i, ablated_metric=clean * kept / 100.0,
                retained=kept, drop=float(drop), influence=abs(float(drop))))
    sweep = SweepResult(model=info, task=TASK, clean_metric=clean, performance=performance,
                        effects=effects, fingerprint=FINGERPRINT, pruned=pruned)
    return ModelReport(model=info, task=TASK, performance=performance, sweep=sweep,
                       brittleness=sweep.brittleness(n_resamples=200),
                       fingerprint=FINGERPRINT)


def pair_report(teacher: ModelReport, student: ModelReport,
                matches: Sequence[tuple[str, str, float]],
                candidates: dict[str, tuple[str, ...]] | None = None) -> PairReport:
    """The pair with teacher component -> (student component, similarity) as matched; a
    teacher component in ``candidates`` was one of a tie (tie-aware matching)."""
    candidates = candidates or {}
    t_infl = {e.name: e.influence for e in teacher.sweep.effects}
    s_infl = {e.name: e.influence for e in student.sweep.effects}
    sims = np.array([m[2] for m in matches])
    ti = np.array([t_infl[m[0]] for m in matches])
    si = np.array([s_infl[m[1]] for m in matches])
    parts = metrics.alignment_parts(sims, ti, si)
    pairs = tuple(
        MatchedPair(t, s, "mlp" if t.startswith("MLP") else "head", sim, float(ti[i]),
                    float(si[i]), float(parts.teacher_share[i]), float(parts.student_share[i]),
                    candidates.get(t, ()))
        for i, (t, s, sim) in enumerate(matches))
    settings = CompareSettings()
    floor = settings.min_student_influence
    fan_in: dict[str, list[str]] = {}
    fan_in_all: dict[str, list[str]] = {}
    for p in pairs:
        fan_in_all.setdefault(p.student, []).append(p.teacher)
        if s_infl[p.student] >= floor and not p.ambiguous:
            fan_in.setdefault(p.student, []).append(p.teacher)
    compression = 1.0 - student.model.n_params / teacher.model.n_params
    return PairReport(
        teacher=teacher, student=student, task=TASK,
        alignment=Alignment(parts.score, parts.mean_similarity, parts.influence_term,
                            parts.weighted_score, pairs),
        brittleness_delta=metrics.brittleness_delta(teacher.brittleness, student.brittleness,
                                                    compression),
        compression=compression, fan_in=fan_in, fan_in_all=fan_in_all,
        discarded=find_discarded(pairs, t_infl, settings, s_infl),
        fingerprint=FINGERPRINT, settings=settings)


def teacher_drops(n_layers: int = 30, n_heads: int = 9, seed: int = 0) -> np.ndarray:
    """Drops of a SmolLM2-like model: most components idle (under a point), a few heads and
    MLPs that carry the task, one that helps when ablated (a negative drop)."""
    rng = np.random.default_rng(seed)
    drops = np.abs(rng.normal(0.0, 0.6, size=(n_layers, n_heads + 1)))
    for layer, index, value in ((23, 3, 61.0), (20, 0, 44.0), (17, 6, 27.0), (14, 5, 12.0),
                                (9, 1, 8.5), (0, n_heads, 100.0), (1, n_heads, 35.0),
                                (24, 4, -19.5)):
        if layer < n_layers:
            drops[layer, index] = value
    return drops


def copy_pair(n_layers: int = 30, n_heads: int = 9) -> PairReport:
    """The teacher and a faithful copy (same architecture, drops within noise), each component
    matched to itself, except one tie: three idle teacher heads matched to L14H5 as tied
    candidates (tie-aware matching), which is no compression."""
    drops = teacher_drops(n_layers, n_heads)
    noise = np.random.default_rng(1).normal(0.0, 0.3, size=drops.shape)
    teacher = model_report("HuggingFaceTB/SmolLM2-135M", drops)
    student = model_report("smollm2-int8", drops + noise, n_params=134_515_008 - 1)
    matches, ties = [], {}
    for layer in range(n_layers):
        for name in names(layer, n_heads):
            matches.append((name, name, 0.99))
    tied = ("L14H1", "L14H2", "L14H5")
    for i, (t, _, sim) in enumerate(matches):
        if t in tied:
            matches[i] = (t, "L14H5", sim)
            ties[t] = tied
    return pair_report(teacher, student, matches, ties)


def depth_pruned_pair(dropped: Sequence[int] = (4, 9, 14, 19, 24, 29), n_layers: int = 30,
                      n_heads: int = 9) -> tuple[PairReport, list[int]]:
    """The teacher and a copy without the ``dropped`` layers (no retraining): each kept teacher
    layer's components matched to their copies, a dropped layer's to the nearest kept layer,
    less similar. Returns the pair and the kept teacher layers."""
    drops = teacher_drops(n_layers, n_heads)
    kept = [layer for layer in range(n_layers) if layer not in dropped]
    student_drops = drops[kept] * 1.1
    student = model_report("smollm2-depth-pruned", student_drops, n_params=110_000_000)
    teacher = model_report("HuggingFaceTB/SmolLM2-135M", drops)
    place = {t: s for s, t in enumerate(kept)}
    matches = []
    for layer in range(n_layers):
        near = layer if layer in place else min(kept, key=lambda k: (abs(k - layer), k))
        similarity = 0.97 if layer in place else 0.55
        for i, name in enumerate(names(layer, n_heads)):
            matches.append((name, names(place[near], n_heads)[i], similarity))
    return pair_report(teacher, student, matches), kept


def head_pruned_pair(pruned: Sequence[str] = ("L20H0", "L23H3"), n_layers: int = 30,
                     n_heads: int = 9) -> PairReport:
    """The teacher and a copy whose ``pruned`` heads had their output weights zeroed: their
    attention patterns (and so their matches) stay, their ablation costs nothing."""
    drops = teacher_drops(n_layers, n_heads)
    student_drops = drops.copy()
    for name in pruned:
        layer, head = (int(x) for x in name[1:].split("H"))
        student_drops[layer, head] = 0.0
    student_drops[21, 2] = 30.0  # another head took part of the work over
    teacher = model_report("HuggingFaceTB/SmolLM2-135M", drops)
    student = model_report("smollm2-head-pruned", student_drops, pruned=tuple(pruned))
    matches = [(name, name, 0.98) for layer in range(n_layers)
               for name in names(layer, n_heads)]
    return pair_report(teacher, student, matches)
