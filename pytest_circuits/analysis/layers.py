"""Which teacher layer each student layer stands for, so that two models of different depth are
compared layer by layer and not by index (numpy only: no model, no file).

A student built by dropping teacher layers (Minitron-Depth, DistilGPT-2's every other layer)
keeps the teacher's layers under new numbers: its layer 4 may be the teacher's layer 5. Comparing
``L16H0`` with ``L16H0`` then compares different computations. The matching already says where
each teacher component went; :func:`align_layers` reads the layer correspondence off it:

* each matched student component votes for the layer of the teacher component it is most
  similar to among those matched to it (its copy, where a dropped layer's component was matched
  to it too), with weight ``1/n + student_share``: half a uniform vote, so a layer without
  influential components still has a say, half its share of the student's influence, so the
  components that do the task count most and idle ones (heads that all attend to the first
  token, matched anywhere) hardly at all. A pair of tie-aware matching whose chooser had
  several candidates within the tie margin is no evidence of which is which and does not vote;
* the map is the monotone one with the most votes (:func:`monotone_alignment`): strictly
  increasing when the student has at most the teacher's depth (a teacher layer stands behind at
  most one student layer), non-decreasing when it is deeper. Ties go to the layer at the
  student layer's relative depth.

A user who knows the correspondence (they dropped the layers themselves) gives it instead, as
``"0:0,1:1,2:2,3:3,4:5"`` (:func:`parse_layer_map`, checked by :func:`layer_map_problem`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "align_layers",
    "aligned_rows",
    "depth",
    "layer_map_problem",
    "layer_votes",
    "monotone_alignment",
    "parse_layer_map",
    "report_layer_map",
    "spans",
]

#: A tie between two maps' votes is broken towards the proportional position by this much per
#: layer of distance, relative to the total vote: far below any real vote, so it only decides
#: between maps the votes cannot tell apart (a student layer without matches, say).
_TIE_BREAK = 1e-9


#: No model has more layers than this (Llama-3.1-405B has 126); a depth beyond it is a damaged
#: report, refused before a vote table of that size is made.
MAX_LAYERS = 1024


def layer_votes(matches: Iterable[tuple[int, int, float]], n_student: int, n_teacher: int
                ) -> np.ndarray:
    """``votes[s, t]``: the summed weight of the matches ``(student layer, teacher layer,
    weight)`` between student layer ``s`` and teacher layer ``t``; a match naming a layer
    outside either model, or with a weight that is not a positive finite number, is left out."""
    for role, n_layers in (("student", n_student), ("teacher", n_teacher)):
        if not 0 <= n_layers <= MAX_LAYERS:
            raise ValueError(f"the {role} has {n_layers} layers; a model has 0 to "
                             f"{MAX_LAYERS}: the report is damaged")
    votes = np.zeros((n_student, n_teacher))
    for student, teacher, weight in matches:
        if 0 <= student < n_student and 0 <= teacher < n_teacher and np.isfinite(weight) \
                and weight > 0:
            votes[student, teacher] += weight
    return votes


def monotone_alignment(votes: np.ndarray) -> tuple[int, ...]:
    """The monotone student-layer -> teacher-layer map with the largest total vote.

    ``votes`` is ``[n_student, n_teacher]``; entry ``s`` of the result is student layer ``s``'s
    teacher layer. Strictly increasing when ``n_student <= n_teacher``, non-decreasing
    otherwise; found by dynamic programming over (student layer, teacher layer).
    """
    votes = np.asarray(votes, dtype=float)
    n_student, n_teacher = votes.shape
    if n_student == 0:
        return ()
    if n_teacher == 0:
        raise ValueError(f"cannot align {n_student} student layers with a teacher of 0 layers")
    strict = n_student <= n_teacher
    # the proportional position of each student layer, to break ties
    where = (np.arange(n_student) * (n_teacher - 1) / max(n_student - 1, 1)
             if n_student > 1 else np.full(1, (n_teacher - 1) / 2))
    scale = max(float(votes.sum()), 1.0) * _TIE_BREAK
    score = votes - scale * np.abs(np.arange(n_teacher)[None, :] - where[:, None])
    best = np.full((n_student, n_teacher), -np.inf)
    came = np.zeros((n_student, n_teacher), dtype=int)
    best[0] = score[0]
    if strict:  # the first layer leaves room for the rest
        best[0, n_teacher - n_student + 1:] = -np.inf
    for s in range(1, n_student):
        # the best previous row ending at or before t (strict: before t)
        running, at = -np.inf, 0
        for t in range(n_teacher):
            limit = t - 1 if strict else t
            if limit >= 0 and best[s - 1, limit] > running:
                running, at = best[s - 1, limit], limit
            if running == -np.inf or (strict and t > n_teacher - n_student + s):
                continue
            best[s, t] = running + score[s, t]
            came[s, t] = at
    last = int(np.argmax(best[-1]))
    chosen = [last]
    for s in range(n_student - 1, 0, -1):
        chosen.append(int(came[s, chosen[-1]]))
    return tuple(reversed(chosen))


def depth(model_report: Any) -> int:
    """A ModelReport's number of layers as its sweep saw them: one past its deepest swept layer
    (the model's ``n_layers`` when nothing was swept). A layer number that is not a whole
    number from 0 to :data:`MAX_LAYERS` is a ``ValueError`` naming it."""
    layers = list(_layers(model_report).values())
    if layers:
        return 1 + max(layers)
    n_layers = getattr(model_report.model, "n_layers", 0)
    return n_layers if isinstance(n_layers, int) and 0 <= n_layers <= MAX_LAYERS else 0


def _layers(model_report: Any) -> dict[str, int]:
    """Component name -> layer, from a ModelReport's sweep."""
    found = {}
    for effect in model_report.sweep.effects:
        layer = effect.layer
        if isinstance(layer, bool) or not isinstance(layer, int) or \
                not 0 <= layer < MAX_LAYERS:
            raise ValueError(f"component {effect.name!r} is in layer {layer!r}, not a layer "
                             f"number from 0 to {MAX_LAYERS - 1}: the report is damaged")
        found[effect.name] = layer
    return found


def align_layers(report: Any) -> dict[int, int]:
    """Student layer -> teacher layer of a PairReport, read from its matched pairs (see the
    module docstring). Models of the same depth are aligned the same way: a caller that wants
    the index for them (the usual case) checks the depths first (:func:`report_layer_map`)."""
    teacher_layer, student_layer = _layers(report.teacher), _layers(report.student)
    best: dict[str, Any] = {}  # student component -> its most similar matched teacher component
    for pair in report.alignment.pairs:
        if pair.ambiguous or pair.student not in student_layer or \
                pair.teacher not in teacher_layer:
            continue
        held = best.get(pair.student)
        if held is None or (pair.similarity, pair.teacher_share) > (held.similarity,
                                                                    held.teacher_share):
            best[pair.student] = pair
    uniform = 1.0 / max(len(best), 1)
    matches = [(student_layer[name], teacher_layer[pair.teacher],
                uniform + max(float(pair.student_share), 0.0))
               for name, pair in best.items()]
    votes = layer_votes(matches, depth(report.student), depth(report.teacher))
    return dict(enumerate(monotone_alignment(votes)))


def report_layer_map(report: Any, given: Mapping[int, int] | None = None) -> dict[int, int]:
    """The student-layer -> teacher-layer map under which a PairReport is shown: the index when
    both models have the same depth and no map is ``given``, else ``given``, else
    :func:`align_layers`."""
    n_student, n_teacher = depth(report.student), depth(report.teacher)
    if given is not None:
        return {int(s): int(t) for s, t in given.items()}
    if n_student == n_teacher:
        return {layer: layer for layer in range(n_student)}
    return align_layers(report)


_ENTRY = re.compile(r"^\s*(\d+)(?:\s*-\s*(\d+))?\s*:\s*(\d+)(?:\s*-\s*(\d+))?\s*$")


def parse_layer_map(text: str) -> dict[int, int]:
    """``"0:0,1:1,2:3"`` as ``{0: 0, 1: 1, 2: 3}``; a run may be written as ranges of the same
    length, ``"0-3:0-3,4-7:5-8"`` (as ``diff`` prints them). A ``ValueError`` names the bad
    entry."""
    mapping: dict[int, int] = {}
    for entry in text.split(","):
        found = _ENTRY.match(entry)
        if found is None:
            raise ValueError(
                f"layer map entry {entry.strip()!r} is not FROM:TO with two layer numbers (or "
                "two ranges of the same length, 4-7:5-8); write it as 0:0,1:1,2:3 (each layer "
                "of one model, then the layer of the other it corresponds to)")
        first, last = int(found.group(1)), int(found.group(2) or found.group(1))
        to_first, to_last = int(found.group(3)), int(found.group(4) or found.group(3))
        if last - first != to_last - to_first or last < first:
            raise ValueError(
                f"layer map entry {entry.strip()!r} maps {last - first + 1} layer(s) onto "
                f"{to_last - to_first + 1}; a range maps onto an increasing range of the same "
                "length")
        for source, target in zip(range(first, last + 1), range(to_first, to_last + 1),
                                  strict=True):
            if source in mapping:
                raise ValueError(f"layer map names layer {source} twice ({source}:"
                                 f"{mapping[source]} and {source}:{target}); give each layer "
                                 "once")
            mapping[source] = target
    return mapping


def spans(layers: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def layer_map_problem(mapping: Mapping[int, int], n_from: int, n_to: int, *,
                      names: tuple[str, str] = ("student", "teacher")) -> str:
    """Why ``mapping`` cannot map the ``n_from`` layers of one model onto the ``n_to`` of
    another ("" when it can): it must name every layer of the first, each onto a layer of the
    second, in increasing order (a layer map that crosses itself is no depth pruning)."""
    source, target = names
    missing = [layer for layer in range(n_from) if layer not in mapping]
    extra = sorted(layer for layer in mapping if not 0 <= layer < n_from)
    if extra:
        return (f"the layer map names {source} layer(s) {spans(extra)}, but the "
                f"{source} has {n_from} layers (0 to {n_from - 1})")
    if missing:
        return (f"the layer map leaves out {source} layer(s) "
                f"{spans(missing)}; name each of its {n_from} layers")
    outside = sorted({t for t in mapping.values() if not 0 <= t < n_to})
    if outside:
        return (f"the layer map points at {target} layer(s) {spans(outside)}, "
                f"but the {target} has {n_to} layers (0 to {n_to - 1})")
    ordered = [mapping[layer] for layer in range(n_from)]
    for layer in range(1, n_from):
        if ordered[layer] <= ordered[layer - 1]:
            return (f"the layer map is not increasing: {source} layer {layer - 1} -> "
                    f"{ordered[layer - 1]} but {layer} -> {ordered[layer]}; each {source} "
                    f"layer must stand for a deeper {target} layer than the one before")
    return ""


def aligned_rows(mapping: Mapping[int, int], n_teacher: int, n_student: int
                 ) -> list[tuple[int | None, int | None]]:
    """Rows of a side-by-side picture: ``(teacher layer, student layer)``, each model's layers
    in order, a student layer on the row of the teacher layer it maps to, ``None`` where one
    side has no layer (a dropped teacher layer; a second student layer on one teacher layer).
    ``mapping`` must be non-decreasing (as :func:`align_layers` and a checked map are)."""
    rows: list[tuple[int | None, int | None]] = []
    next_teacher = 0
    for student in range(n_student):
        teacher = mapping.get(student)
        if teacher is None:
            rows.append((None, student))
            continue
        while next_teacher < min(teacher, n_teacher):
            rows.append((next_teacher, None))
            next_teacher += 1
        if next_teacher == teacher and teacher < n_teacher:
            rows.append((teacher, student))
            next_teacher += 1
        else:  # the teacher layer already has a student layer on its row
            rows.append((None, student))
    rows.extend((teacher, None) for teacher in range(next_teacher, n_teacher))
    return rows
