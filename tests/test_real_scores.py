"""The recommended scores on a real model (SmolLM2-135M-Instruct, 30 layers x 9 heads): exactly
1.0 against itself, a behaviour-preserving quantised copy maps to itself with no compression and
scores high, a 4-bit copy's near-identical heads are reported as ties instead of compression,
and a pruned head is discarded and moves the weighted score far more than the paper's.

One base model, three copies and one sweep each (6 prompts), shared by every test here through
the analysis cache: about five minutes on an idle 2-core runner (13 under heavy load).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import smollm2_gguf

from pytest_circuits.analysis.cached import pair_report
from pytest_circuits.analysis.comparison import PRESETS, PairReport
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.tasks import Task

pytestmark = [pytest.mark.slow, pytest.mark.real]

N_PROMPTS = 6
NAMES = ["Mary", "John", "Tom", "James", "Sarah", "Paul", "Anna", "David"]
PLACES = ["store", "park", "school", "office"]
OBJECTS = ["drink", "book", "ball", "gift"]


def ioi_task(n_prompts: int = N_PROMPTS, seed: int = 0) -> Task:
    """IOI with names that are one token each for SmolLM2's BPE (checked by a test below)."""
    rng = random.Random(seed)
    prompts, correct, distractors, corrupted = [], [], [], []
    for i in range(n_prompts):
        a, b = rng.sample(NAMES, 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        first, second = (a, b) if i % 2 == 0 else (b, a)
        prompts.append(f"When {first} and {second} went to the {place}, {b} gave a {obj} to")
        correct.append(f" {a}")
        distractors.append(f" {b}")
        c, d, e = rng.sample(NAMES, 3)
        corrupted.append(f"When {c} and {d} went to the {place}, {e} gave a {obj} to")
    return Task(name="ioi-smollm2", prompts=tuple(prompts), correct=tuple(correct),
                distractors=tuple(distractors), corrupted=tuple(corrupted))


@pytest.fixture(scope="module")
def task() -> Task:
    return ioi_task()


@pytest.fixture(scope="module")
def base() -> CircuitModel:
    torch.set_num_threads(1)  # on a shared 2-core runner more threads only add contention
    return load_model(smollm2_gguf(), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tokenizer_dir(base: CircuitModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    base.tokenizer.save_pretrained(folder)
    return folder


def _copy(base: CircuitModel, tokenizer_dir: Path, edit, name: str) -> CircuitModel:
    hf = copy.deepcopy(base.hf_model)
    with torch.no_grad():
        edit(hf)
    return load_model(hf, tokenizer=tokenizer_dir, device="cpu", name=name)


def quantise(bits: int):
    """Round every linear layer's weights (not the embedding) to ``bits``-bit levels per row."""
    levels = 2 ** (bits - 1) - 1

    def edit(hf) -> None:
        for name, param in hf.named_parameters():
            if param.dim() == 2 and "embed" not in name and "lm_head" not in name:
                scale = param.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
                param.copy_(torch.round(param / scale) * scale)

    return edit


def recommended(teacher: CircuitModel, student: CircuitModel, task: Task) -> PairReport:
    return pair_report(load_pair(teacher, student), task, preset="recommended",
                       n_prompts=N_PROMPTS)


@pytest.fixture(scope="module")
def against_itself(base, task) -> PairReport:
    return recommended(base, base, task)


@pytest.fixture(scope="module")
def six_bit(base, tokenizer_dir, task) -> PairReport:
    """6-bit per-row weights: 3.5% weight error, the clean logit difference unchanged."""
    return recommended(base, _copy(base, tokenizer_dir, quantise(6), "smollm2-6bit"), task)


@pytest.fixture(scope="module")
def four_bit(base, tokenizer_dir, task) -> PairReport:
    """4-bit per-row weights: 15% weight error; keeps about half the logit difference."""
    return recommended(base, _copy(base, tokenizer_dir, quantise(4), "smollm2-4bit"), task)


@pytest.fixture(scope="module")
def eight_bit(base, tokenizer_dir, task) -> PairReport:
    """8-bit per-row weights: a faithful copy (issue 18)."""
    return recommended(base, _copy(base, tokenizer_dir, quantise(8), "smollm2-8bit"), task)


def test_the_task_answers_are_single_tokens(base, task):
    for word in {*task.correct, *task.distractors}:
        assert len(base.tokenizer.encode(word, add_special_tokens=False)) == 1, word


def test_the_model_against_itself_scores_exactly_one(against_itself):
    a = against_itself.alignment
    assert (a.score, a.weighted_score, a.mean_similarity) == (1.0, 1.0, 1.0)
    assert all(p.teacher == p.student for p in a.pairs)
    assert against_itself.compressed == {}
    assert against_itself.discarded == []


def test_a_behaviour_preserving_quantised_copy_maps_to_itself_and_scores_high(six_bit):
    pairs = six_bit.alignment.pairs
    assert len(pairs) == 300
    assert sum(p.teacher == p.student for p in pairs) >= 0.95 * len(pairs)  # measured 298
    assert six_bit.compressed == {}
    assert six_bit.alignment.score >= 0.95  # measured 0.993
    # measured 0.919: mid-size components move by a few points under 3.5% weight error
    assert six_bit.alignment.weighted_score >= 0.88


def test_a_four_bit_copy_reports_ties_not_compression(four_bit):
    pairs = four_bit.alignment.pairs
    # the paper's matching reports 11 compressed student components on this copy
    assert four_bit.compressed == {}
    assert four_bit.ambiguous, "the first-token heads should be reported as ties"
    itself_or_tied = sum(
        p.teacher == p.student or (p.ambiguous and p.teacher in p.candidates) for p in pairs
    )
    assert itself_or_tied >= 0.95 * len(pairs)  # measured 286 of 300


def test_a_pruned_head_is_discarded_and_moves_the_weighted_score(
    base, tokenizer_dir, task, against_itself
):
    heads = [e for e in against_itself.teacher.sweep.effects if e.kind == "head"]
    top = max(heads, key=lambda e: e.influence)
    d_head = base.d_head

    def prune(hf) -> None:
        columns = slice(top.head * d_head, (top.head + 1) * d_head)
        hf.model.layers[top.layer].self_attn.o_proj.weight[:, columns] = 0

    pruned = _copy(base, tokenizer_dir, prune, "smollm2-pruned")
    report = recommended(base, pruned, task)
    assert top.name in [d.teacher for d in report.discarded]
    floor = PRESETS["recommended"]["noise_floor"]
    influences = np.array([p.teacher_influence for p in against_itself.alignment.pairs])
    share = top.influence / influences[influences >= floor].sum()
    lost = 1.0 - report.alignment.weighted_score
    # at least the head's share (A_w <= 1 - share when its counterpart does nothing); measured
    # 2.4x the share for L23H3, whose removal also takes MLP0 from 47.6 to 5.5 points
    assert share <= lost <= 3.0 * share
    # the paper's A barely moves: 0.9889 since issue 18 (0.9977 by attention patterns alone),
    # because the combined similarity also sees that the heads after L23H3 write a little
    # differently without it; still a twentieth of what the weighted score loses
    assert 1.0 - report.alignment.score < 0.02


def test_quantised_copies_map_to_themselves_by_what_their_heads_write(eight_bit, four_bit):
    """Heads that read alike (first-token heads) write to their own directions: the combined
    similarity tells them apart, so both copies map to themselves without ties or compression
    (by attention patterns alone, 16 prompts: 4-bit 242 of 300, 143 ties, L11H4 "absorbing"
    L10H8)."""
    for report in (eight_bit, four_bit):
        pairs = report.alignment.pairs
        assert sum(p.teacher == p.student for p in pairs) >= 0.95 * len(pairs)
        assert sum(p.ambiguous for p in pairs) <= 0.10 * len(pairs)
        assert report.compressed == {}
        assert all(len(teachers) == 1 for teachers in report.fan_in.values())


def test_a_faithful_eight_bit_copy_discards_nothing(eight_bit):
    # the dead floor alone discarded MLP6 (2.27 -> 1.89 points): noise, within 2 standard errors
    assert eight_bit.discarded == []
    assert all(e.stderr is not None for e in eight_bit.teacher.sweep.effects)
