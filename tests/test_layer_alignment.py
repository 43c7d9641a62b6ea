"""Layer alignment: a student built by dropping teacher layers maps back onto the layers it
kept, read from constructed matchings (no model)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_circuits.analysis.layers import (
    align_layers,
    aligned_rows,
    layer_map_problem,
    layer_votes,
    monotone_alignment,
    parse_layer_map,
    report_layer_map,
)
from pytest_circuits.results import MatchedPair

N_HEADS = 3


@dataclasses.dataclass
class _Effect:
    name: str
    layer: int


@dataclasses.dataclass
class _Model:
    n_layers: int


@dataclasses.dataclass
class _Sweep:
    effects: list[_Effect]


@dataclasses.dataclass
class _ModelReport:
    model: _Model
    sweep: _Sweep


@dataclasses.dataclass
class _Alignment:
    pairs: tuple[MatchedPair, ...]


@dataclasses.dataclass
class _Pair:
    teacher: _ModelReport
    student: _ModelReport
    alignment: _Alignment


def names(layer: int) -> list[str]:
    return [f"L{layer}H{h}" for h in range(N_HEADS)] + [f"MLP{layer}"]


def model(n_layers: int) -> _ModelReport:
    effects = [_Effect(n, layer) for layer in range(n_layers) for n in names(layer)]
    return _ModelReport(_Model(n_layers), _Sweep(effects))


def pruned_pair(n_teacher: int, kept: list[int], rng: np.random.Generator,
                noise: int = 0) -> _Pair:
    """A student made of the teacher layers ``kept``: each teacher component of a kept layer is
    matched to its copy (which does about the same share of the work); one of a dropped layer
    to a component of the nearest kept layer, less similar; the ``noise`` least influential
    teacher components to the least influential student components, anywhere, with similarity
    1 (heads that all attend to the first token, matched by plain similarity)."""
    student_of = {t: s for s, t in enumerate(kept)}
    teacher_names = [name for layer in range(n_teacher) for name in names(layer)]
    influence = dict(zip(teacher_names, rng.exponential(size=len(teacher_names)), strict=True))
    t_total = sum(influence.values())
    copy = {s_name: influence[t_name] * float(np.exp(rng.normal(0.0, 0.3)))
            for t in kept for t_name, s_name in zip(names(t), names(student_of[t]), strict=True)}
    s_total = sum(copy.values())
    dead = sorted(copy, key=copy.__getitem__)[:max(1, len(copy) // 4)]

    def pair(teacher: str, student: str, similarity: float) -> MatchedPair:
        return MatchedPair(teacher, student, "mlp" if teacher.startswith("MLP") else "head",
                           similarity, influence[teacher], copy[student],
                           influence[teacher] / t_total, copy[student] / s_total)

    pairs = []
    for layer in range(n_teacher):
        for part, name in enumerate(names(layer)):
            if layer in student_of:
                pairs.append(pair(name, names(student_of[layer])[part], 0.95))
            else:  # the nearest kept layer (ties: the one below)
                near = min(kept, key=lambda k, layer=layer: (abs(k - layer), k))
                pairs.append(pair(name, names(student_of[near])[int(rng.integers(N_HEADS + 1))],
                                  0.5))
    for teacher in sorted(influence, key=influence.__getitem__)[:noise]:
        index = teacher_names.index(teacher)
        pairs[index] = pair(teacher, dead[int(rng.integers(len(dead)))], 1.0)
    return _Pair(model(n_teacher), model(len(kept)), _Alignment(tuple(pairs)))


SMOLLM2_DROPPED = (4, 9, 14, 19, 24, 29)


def test_the_depth_pruned_smollm2_student_maps_onto_the_layers_it_kept() -> None:
    kept = [layer for layer in range(30) if layer not in SMOLLM2_DROPPED]
    report = pruned_pair(30, kept, np.random.default_rng(0))
    assert align_layers(report) == dict(enumerate(kept))
    # the "student L16H0" is the teacher's layer 20, not its layer 16
    assert align_layers(report)[16] == 20


def test_noise_from_uninfluential_matches_anywhere_does_not_move_a_layer() -> None:
    kept = [layer for layer in range(30) if layer not in SMOLLM2_DROPPED]
    report = pruned_pair(30, kept, np.random.default_rng(1), noise=30)
    assert align_layers(report) == dict(enumerate(kept))


def test_ambiguous_matches_do_not_vote() -> None:
    kept = [0, 2, 3]
    report = pruned_pair(4, kept, np.random.default_rng(2))
    # every component of the dropped teacher layer 1 claims a head of student layer 1 (the
    # teacher's layer 2), more similar than the head's copy, but each as one of a tie
    pairs = [dataclasses.replace(p, student=names(1)[i % N_HEADS], similarity=1.0,
                                 candidates=(names(1)[0], names(1)[1]))
             if p.teacher in names(1) else p
             for i, p in enumerate(report.alignment.pairs)]
    report.alignment = _Alignment(tuple(pairs))
    assert align_layers(report) == {0: 0, 1: 2, 2: 3}


@settings(max_examples=60, deadline=None)
@given(n_teacher=st.integers(2, 36), data=st.data(), seed=st.integers(0, 2**31))
def test_any_student_made_by_dropping_layers_maps_back_exactly(
        n_teacher: int, data: Any, seed: int) -> None:
    kept = sorted(data.draw(st.sets(st.integers(0, n_teacher - 1), min_size=1,
                                    max_size=n_teacher)))
    report = pruned_pair(n_teacher, kept, np.random.default_rng(seed))
    assert align_layers(report) == dict(enumerate(kept))


def test_a_same_depth_copy_aligns_by_index_and_report_layer_map_skips_the_vote() -> None:
    report = pruned_pair(6, list(range(6)), np.random.default_rng(3))
    assert align_layers(report) == {i: i for i in range(6)}
    # scrambled matches: equal depths are still shown by index
    scrambled = _Pair(report.teacher, report.student, _Alignment(tuple(
        dataclasses.replace(p, student=names(5 - int(p.teacher[1]))[0])
        if p.teacher.startswith("L") else p for p in report.alignment.pairs)))
    assert report_layer_map(scrambled) == {i: i for i in range(6)}
    assert report_layer_map(scrambled, {i: 5 - i for i in range(6)}) == {
        i: 5 - i for i in range(6)}


def test_the_alignment_is_monotone_even_where_the_votes_cross() -> None:
    votes = np.array([[0.0, 0.0, 5.0],   # student 0 votes for teacher 2
                      [4.0, 0.0, 0.0],   # student 1 for teacher 0: cannot both hold
                      [0.0, 0.0, 1.0]])
    mapping = monotone_alignment(votes)
    assert list(mapping) == sorted(mapping) and len(set(mapping)) == 3
    assert mapping == (0, 1, 2)


def test_a_deeper_student_maps_monotonically_with_repeats() -> None:
    votes = layer_votes([(0, 0, 1.0), (1, 0, 1.0), (2, 1, 1.0), (3, 1, 0.5)], 4, 2)
    assert monotone_alignment(votes) == (0, 0, 1, 1)


def test_without_any_vote_layers_spread_proportionally() -> None:
    assert monotone_alignment(np.zeros((3, 7))) == (0, 3, 6)
    assert monotone_alignment(np.zeros((1, 5))) == (2,)


def test_rows_of_a_side_by_side_picture_leave_dropped_layers_empty() -> None:
    rows = aligned_rows({0: 0, 1: 2, 2: 3}, 5, 3)
    assert rows == [(0, 0), (1, None), (2, 1), (3, 2), (4, None)]
    assert aligned_rows({0: 0, 1: 0, 2: 1}, 2, 3) == [(0, 0), (None, 1), (1, 2)]


def test_a_layer_map_is_parsed_and_checked() -> None:
    assert parse_layer_map("0:0, 1:1,2:3") == {0: 0, 1: 1, 2: 3}
    with pytest.raises(ValueError, match="'1-2' is not FROM:TO"):
        parse_layer_map("0:0,1-2")
    with pytest.raises(ValueError, match="names layer 1 twice"):
        parse_layer_map("0:0,1:1,1:2")
    assert layer_map_problem({0: 0, 1: 2}, 2, 3) == ""
    assert "leaves out student layer(s) 2" in layer_map_problem({0: 0, 1: 2}, 3, 4)
    assert "names student layer(s) 5" in layer_map_problem({0: 0, 1: 1, 5: 2}, 2, 4)
    assert "points at teacher layer(s) 9" in layer_map_problem({0: 0, 1: 9}, 2, 4)
    assert "not increasing: student layer 0 -> 2 but 1 -> 1" in layer_map_problem(
        {0: 2, 1: 1}, 2, 4)
