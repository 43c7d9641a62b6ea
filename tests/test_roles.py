"""Head roles: the scores on constructed attention (planted heads score 1, others 0), the zoo's
roles on numerals and IOI, TransformerLens' head detector on the same patterns, every family,
and the teacher -> student comparison (kept, discarded, merged)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import head_detector

from pytest_circuits import GateConfigError, compare_roles, head_roles
from pytest_circuits.analysis import engine
from pytest_circuits.analysis.roles import (
    attention_targets,
    detector_score,
    member_slots,
    repeated_tokens,
    target_attention,
)
from pytest_circuits.analysis.store import as_task
from pytest_circuits.identity import ModelInfo
from pytest_circuits.models import load_model
from pytest_circuits.results import ROLES, RoleResult
from pytest_circuits.results.roles import MergedHead


@pytest.fixture(scope="module")
def teacher():
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def brittle():
    return load_model("zoo:tiny-student-brittle", device="cpu")


def planted(targets: torch.Tensor) -> torch.Tensor:
    """Attention that spreads each row evenly over its targets (rows without one attend to
    position 0): [n, q, k]."""
    weights = targets.double()
    empty = weights.sum(-1) == 0
    weights[..., 0] = torch.where(empty, torch.ones_like(weights[..., 0]), weights[..., 0])
    return weights / weights.sum(-1, keepdim=True)


def score(patterns: torch.Tensor, targets: torch.Tensor) -> list[float]:
    mass, rows = target_attention(patterns, targets)
    return (mass / rows).tolist()


# ----------------------------------------------------------------------------- constructed heads


def test_a_planted_previous_token_head_scores_one_and_the_others_nothing() -> None:
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    prev = planted(attention_targets(tokens, "previous_token"))
    first = torch.zeros_like(prev)
    first[..., 0] = 1.0  # every row on the first token
    own = torch.eye(12, dtype=torch.float64).expand(3, 12, 12)  # every row on itself
    patterns = torch.stack([prev, first, own], dim=1)
    scores = score(patterns, attention_targets(tokens, "previous_token"))
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(1 / 11)  # only row 1's previous token is position 0
    assert scores[2] == pytest.approx(0.0)


def test_planted_duplicate_and_induction_heads_score_one_on_repeated_tokens(teacher) -> None:
    tokens = repeated_tokens(teacher, seed=3).cpu()
    assert tokens.shape == (4, 21)  # <bos> + 10 random tokens, twice
    assert (tokens[:, 0] == teacher.tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:11], tokens[:, 11:21])
    assert all(len(set(row[1:11].tolist())) == 10 for row in tokens)  # distinct within a copy
    duplicate = planted(attention_targets(tokens, "duplicate_token"))
    induction = planted(attention_targets(tokens, "induction"))
    patterns = torch.stack([duplicate, induction], dim=1)
    dup = score(patterns, attention_targets(tokens, "duplicate_token"))
    ind = score(patterns, attention_targets(tokens, "induction"))
    assert dup == pytest.approx([1.0, 0.0])
    assert ind == pytest.approx([0.0, 1.0])
    # token i of the second copy: its duplicate is i - 10, the induction target i - 9
    targets = attention_targets(tokens, "induction")[0]
    assert targets[15].nonzero().flatten().tolist() == [6]


def test_member_slots_are_the_listed_numbers_and_the_ioi_names(teacher) -> None:
    numerals = engine.task_tensors(teacher, as_task("numerals", 8, 0, teacher)).encoded
    pieces = teacher.tokenizer.convert_ids_to_tokens(list(numerals.tokens[0]))
    slots = member_slots(numerals)
    assert slots == [4, 9, 14, 19]
    assert [pieces[i] for i in slots] == ["1", "2", "3", "4"]
    ioi = engine.task_tensors(teacher, as_task("ioi", 8, 0, teacher)).encoded
    assert member_slots(ioi) == [2, 4, 10]  # A, B and S2 of "When A and B went ..., S gave"


def test_a_planted_similar_member_head_scores_one_where_the_zoo_teacher_has_none(teacher) -> None:
    encoded = engine.task_tensors(teacher, as_task("numerals", 8, 0, teacher)).encoded
    tokens = torch.tensor(encoded.tokens)
    slots = member_slots(encoded)
    member = planted(attention_targets(tokens, "similar_member", slots))
    prev = planted(attention_targets(tokens, "previous_token"))
    patterns = torch.stack([member, prev], dim=1)
    assert score(patterns, attention_targets(tokens, "similar_member", slots)) == \
        pytest.approx([1.0, 0.0])
    # the zoo teacher's best head on numerals (L1H1) reaches a fifth of that
    roles = head_roles(teacher, "numerals", n_prompts=8)
    assert roles.holders("similar_member") == []
    assert roles.best("similar_member") == pytest.approx(0.21, abs=0.02)


# ----------------------------------------------------------------------------- the zoo


def test_the_zoo_teachers_roles_on_ioi_and_numerals(teacher) -> None:
    ioi = head_roles(teacher, "ioi", n_prompts=8)
    assert set(ioi.scores) == set(ROLES) and not ioi.not_applicable
    assert ioi.holders("similar_member") == ["L2H1", "L2H2", "L2H3", "L3H2"]
    assert ioi.score("similar_member", "L2H2") == pytest.approx(0.55, abs=0.02)
    assert ioi.held == {"similar_member": ["L2H1", "L2H2", "L2H3", "L3H2"]}
    # a toy language without repetition: no duplicate-token or induction head
    assert ioi.best("duplicate_token") < 0.15 and ioi.best("induction") < 0.15
    numerals = head_roles(teacher, "numerals", n_prompts=8)
    assert numerals.held == {}
    assert "inhibition" in numerals.not_applicable  # no repeated subject in a list
    # near misses: L0H2 attends to the previous token, L0H0 moves the last number
    assert numerals.score("previous_token", "L0H2") == pytest.approx(0.47, abs=0.02)
    assert numerals.score("mover", "L0H0") == pytest.approx(0.296, abs=0.003)
    for values in (*ioi.scores.values(), *numerals.scores.values()):
        assert all(0.0 <= v <= 1.0 for v in values)


def test_the_brittle_student_keeps_one_similar_member_head_on_ioi(teacher, brittle) -> None:
    t = head_roles(teacher, "ioi", n_prompts=8)
    s = head_roles(brittle, "ioi", n_prompts=8)
    assert s.holders("similar_member") == ["L1H3"]
    comparison = compare_roles(t, s)
    assert comparison.discarded == {} and comparison.merged == []


def test_roles_are_cached_and_renamed_for_the_asking_model(teacher) -> None:
    first = head_roles(teacher, "ioi", n_prompts=8)
    assert head_roles(teacher, "ioi", n_prompts=8) is first
    assert first.model.name == teacher.name
    assert RoleResult.from_dict(first.to_dict()) == first


def test_roles_are_stored_on_disk_and_read_back_in_a_new_session(teacher, tmp_path) -> None:
    from pytest_circuits import cache
    from pytest_circuits.config import context

    with context.changed(cache=context.CacheStore()):
        cache.configure(tmp_path / "cache")
        first = head_roles(teacher, "numerals", n_prompts=4)
        [entry] = (tmp_path / "cache").glob("roles-*")
        cache.forget()  # a new session: nothing in memory
        again = head_roles(teacher, "numerals", n_prompts=4)
    assert again is not first and again == first
    assert entry.exists()


@pytest.mark.parametrize("name", ["tiny-llama-teacher", "tiny-bert-teacher",
                                  "tiny-distilbert-student"])
def test_every_zoo_family_gets_a_score_per_head_and_role(name) -> None:
    model = load_model(f"zoo:{name}", device="cpu")
    roles = head_roles(model, "ioi", n_prompts=4)
    assert len(roles.heads) == model.n_layers * model.n_heads
    for role, values in roles.scores.items():
        assert len(values) == len(roles.heads), role
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in values), role
    assert set(roles.scores) | set(roles.not_applicable) == set(ROLES)


# ----------------------------------------------------------------------------- TransformerLens


def test_transformer_lens_head_detector_gives_our_scores_on_the_same_prompts(teacher) -> None:
    """TransformerLens' detect_head runs on our bridge: on each prompt its score equals its
    published formula on our captured patterns, and our score times the share of rows with a
    target."""
    task = as_task("numerals", 4, 0, teacher)
    tensors = engine.task_tensors(teacher, task)
    hooks = [engine.pattern_hook(i, teacher) for i in range(teacher.n_layers)]
    with torch.no_grad():
        capture = engine.run_capture(teacher, tensors.tokens, cache_names=hooks)
    patterns = torch.cat([capture.cache[h].double() for h in hooks], dim=1)
    tokens = tensors.tokens.cpu()
    ours = head_roles(teacher, task).scores["previous_token"]
    seq = tokens.shape[1]
    tl = head_detector.detect_head(teacher.bridge, list(task.prompts), "previous_token_head")
    for b, prompt in enumerate(task.prompts):
        assert torch.equal(teacher.bridge.to_tokens(prompt)[0].cpu(), tokens[b])
    for index, head in enumerate(range(patterns.shape[1])):
        by_formula = sum(detector_score(patterns[b, head], tokens[b], "previous_token")
                         for b in range(len(task.prompts))) / len(task.prompts)
        layer, order = divmod(head, teacher.n_heads)
        assert float(tl[layer, order]) == pytest.approx(by_formula, abs=1e-5)
        assert ours[index] * (seq - 1) / seq == pytest.approx(by_formula, abs=1e-6)


def test_transformer_lens_duplicate_and_induction_scores_on_the_repeated_set(teacher) -> None:
    tokens = repeated_tokens(teacher, seed=0).cpu()
    texts = [" ".join(teacher.tokenizer.convert_ids_to_tokens(row[1:].tolist()))
             for row in tokens]
    for text, row in zip(texts, tokens, strict=True):
        assert torch.equal(teacher.bridge.to_tokens(text)[0].cpu(), row)
    roles = head_roles(teacher, "ioi", n_prompts=8)
    seq = tokens.shape[1]
    for role, tl_name in (("duplicate_token", "duplicate_token_head"),
                          ("induction", "induction_head")):
        tl = head_detector.detect_head(teacher.bridge, texts, tl_name)
        covered = 10 / seq  # the second copy's 10 rows have a target
        ours = torch.tensor(roles.scores[role]).reshape(teacher.n_layers, teacher.n_heads)
        assert torch.allclose(tl.double(), ours.double() * covered, atol=1e-5), role


# ----------------------------------------------------------------------------- comparison


def _result(name: str, heads: list[str], scores: dict[str, list[float]]) -> RoleResult:
    info = ModelInfo(name=name, source=name, architecture="GPT2LMHeadModel", kind="causal",
                     n_layers=2, n_heads=2, d_head=8, d_model=16, n_params=1000,
                     dtype="float32", device_kind="cpu", processing="raw",
                     weights_sha256="0" * 64)
    return RoleResult(model=info, task="t", heads=tuple(heads),
                      scores={r: tuple(v) for r, v in scores.items()},
                      thresholds={r: 0.5 for r in scores})


def test_compare_roles_names_discarded_merged_and_kept_roles() -> None:
    from pytest_circuits.results import MatchedPair

    teacher = _result("T", ["L0H0", "L0H1", "L1H0"], {
        "previous_token": [0.9, 0.0, 0.0], "induction": [0.0, 0.8, 0.0],
        "mover": [0.0, 0.0, 0.7], "duplicate_token": [0.1, 0.1, 0.1]})
    student = _result("S", ["L0H0", "L0H1"], {
        "previous_token": [0.9, 0.0], "induction": [0.7, 0.0],
        "mover": [0.2, 0.1], "duplicate_token": [0.0, 0.0]})
    pairs = [MatchedPair(t, s, "head", 0.9, 1.0, 1.0, 0.3, 0.3)
             for t, s in (("L0H0", "L0H0"), ("L0H1", "L0H0"), ("L1H0", "L0H1"))]
    comparison = compare_roles(teacher, student, pairs)
    assert comparison.discarded == {"mover": ["L1H0"]}
    assert comparison.merged == [MergedHead("L0H0", ("previous_token", "induction"),
                                            {"previous_token": ("L0H0",),
                                             "induction": ("L0H1",)})]
    assert [(k.role, k.teacher, k.student, k.student_holds) for k in comparison.kept] == [
        ("previous_token", "L0H0", "L0H0", True), ("induction", "L0H1", "L0H0", True),
        ("mover", "L1H0", "L0H1", False)]
    assert comparison.preserved == ["previous_token", "induction"]


def test_a_student_head_holding_roles_one_teacher_head_also_holds_is_not_merged() -> None:
    teacher = _result("T", ["L0H0"], {"previous_token": [0.9], "induction": [0.9]})
    student = _result("S", ["L0H0"], {"previous_token": [0.9], "induction": [0.9]})
    assert compare_roles(teacher, student).merged == []


def test_an_unknown_role_is_refused_with_a_did_you_mean(teacher) -> None:
    with pytest.raises(GateConfigError, match=r"'inducton' is not a head role \(did you mean "
                                              r"'induction'\?\)"):
        head_roles(teacher, "ioi", roles=["inducton"])
    with pytest.raises(GateConfigError, match="must be 'all' or a non-empty list"):
        head_roles(teacher, "ioi", roles=[])


# ----------------------------------------------------------------------------- a real model


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_has_duplicate_token_induction_and_mover_heads_on_ioi() -> None:
    """SmolLM2-135M (30 x 9 query heads over 3 key/value heads): the IOI roles known to exist
    at this size are found on 4 prompts and the repeated random tokens."""
    from helpers import smollm2_gguf

    from pytest_circuits.tasks import Task

    pairs = (("Mary", "John"), ("Tom", "Anna"), ("James", "Sarah"), ("Paul", "Mark"))
    task = Task(
        name="smollm2-ioi-4",
        prompts=tuple(f"When {a} and {b} went to the store, {b} gave a drink to"
                      for a, b in pairs),
        correct=tuple(" " + a for a, _ in pairs),
        distractors=tuple(" " + b for _, b in pairs),
        corrupted=tuple(f"When {a} and {b} went to the store, {a} gave a drink to"
                        for a, b in pairs),
    )
    model = load_model(smollm2_gguf(), device="cpu")
    roles = head_roles(model, task, roles=["duplicate_token", "induction", "mover"])
    held = roles.held
    assert set(held) == {"duplicate_token", "induction", "mover"}
    # measured: duplicate-token L2H4 L8H1 L9H2 L14H3, induction L17H3-5 L18H6, movers L23H0
    # (0.70), L23H1 (0.47), L23H7 (0.31)
    assert "L14H3" in held["duplicate_token"]
    assert roles.score("duplicate_token", "L14H3") == pytest.approx(0.764, abs=0.02)
    assert {"L17H4", "L18H6"} <= set(held["induction"])
    assert roles.score("induction", "L18H6") == pytest.approx(0.796, abs=0.02)
    assert {"L23H0", "L23H1"} <= set(held["mover"])
    assert roles.score("mover", "L23H0") == pytest.approx(0.696, abs=0.02)
