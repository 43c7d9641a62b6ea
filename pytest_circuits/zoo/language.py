"""The zoo's toy language: its word-level tokenizers, the sentence generator and training batches.

Every zoo family trains on the same text. The causal families (GPT-2, Llama) share one
tokenizer; the masked family (BERT, DistilBERT) uses the same vocabulary with ``[MASK]``
appended, so adding it leaves the causal tokenizer's files (and their sha256) unchanged.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pytest_circuits.tasks import BUILTIN_TASKS, builtin_task
from pytest_circuits.tasks.words import (
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    NUMBER_WORDS,
    NUMERAL_MEMBERS,
    NUMERAL_VERBS,
)

__all__ = [
    "MASK_TOKEN",
    "MIXTURE",
    "SPECIAL_TOKENS",
    "ToyLanguage",
    "batches",
    "build_masked_tokenizer",
    "build_tokenizer",
    "build_vocab",
    "training_pools",
]

TRAIN_TASK_SEED = 100_000
TRAIN_POOL = 30_000  # training prompts drawn per built-in task
_GROUP = 8  # batches drawn together and grouped by length

#: Share of task sentences in the toy language (the rest is filler).
MIXTURE: tuple[tuple[str, float], ...] = (("numerals", 0.15), ("numwords", 0.15), ("ioi", 0.5))
PREFIX_SHARE = 0.1  # documents with a filler sentence before the main sentence
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
#: The masked family's extra token, appended after the whole causal vocabulary (id 142).
MASK_TOKEN = "[MASK]"
_FILLER_WORDS = ("When", "and", "went", "to", "the", "gave", "a", "in", "saw", "has", "The",
                 "is", "here", "Then", "count", "after")
_PUNCTUATION = (".", ",", ":")


def build_vocab() -> list[str]:
    """The toy language's words, in a fixed order (specials first)."""
    words: list[str] = list(SPECIAL_TOKENS)
    groups = (
        _PUNCTUATION,
        tuple(str(n) for n in range(0, 21)),
        NUMBER_WORDS,
        NUMERAL_VERBS,
        NUMERAL_MEMBERS,
        IOI_NAMES,
        IOI_PLACES,
        IOI_OBJECTS,
        _FILLER_WORDS,
    )
    for group in groups:
        for word in group:
            if word not in words:
                words.append(word)
    return words


def build_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """Word-level tokenizer of the causal families: splits whitespace and punctuation, prepends
    ``<bos>``.

    ``" 5"`` encodes to the single token ``5`` (with ``add_special_tokens=False``).
    """
    return _wrap(build_vocab(), model_max_length)


def build_masked_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """The masked family's tokenizer: the causal vocabulary plus ``[MASK]`` as the last id.

    ``[MASK]`` is a special (added) token, so ``"... in [MASK]"`` encodes it as one token even
    though the pre-tokenizer isolates punctuation such as ``[``.
    """
    return _wrap([*build_vocab(), MASK_TOKEN], model_max_length, mask_token=MASK_TOKEN)


def _wrap(
    words: list[str], model_max_length: int, **special: str
) -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        **special,
    )


# ----------------------------------------------------------------------------- toy language


@functools.lru_cache(maxsize=4)
def training_pools(seed: int) -> dict[str, tuple[str, ...]]:
    """Per built-in task, ``TRAIN_POOL`` completed training sentences (prompt + answer + ".").

    Drawn with ``builtin_task(name, seed=TRAIN_TASK_SEED + seed)``: other prompts than the
    held-out evaluation set (seed ``EVAL_SEED``) and the test suites' seeds.
    """
    pools = {}
    for name in BUILTIN_TASKS:
        task = builtin_task(name, n_prompts=TRAIN_POOL, seed=TRAIN_TASK_SEED + seed, n_reference=1)
        pools[name] = tuple(f"{p}{c}." for p, c in zip(task.prompts, task.correct, strict=True))
    return pools


class ToyLanguage:
    """Sentences of the toy language: the three task templates (with answers) plus filler."""

    def __init__(self, pool_seed: int, stream_seed: int) -> None:
        self.rng = random.Random(f"pytest-circuits-zoo/corpus/{pool_seed}/{stream_seed}")
        self.pools = training_pools(pool_seed)
        self.fillers: tuple[Callable[[random.Random], str], ...] = (
            _went, _went_pair, _uncounted_list, _short_list, _counting, _saw,
        )

    def sentence(self) -> str:
        rng = self.rng
        roll = rng.random()
        for name, share in MIXTURE:
            if roll < share:
                return rng.choice(self.pools[name])
            roll -= share
        return rng.choice(self.fillers)(rng)

    def document(self) -> str:
        """One training document: usually one sentence, sometimes a short filler before it."""
        if self.rng.random() < PREFIX_SHARE:
            return f"{self.rng.choice(self.fillers)(self.rng)} {self.sentence()}"
        return self.sentence()


def _went(rng: random.Random) -> str:
    return f"{rng.choice(IOI_NAMES)} went to the {rng.choice(IOI_PLACES)}."


def _went_pair(rng: random.Random) -> str:
    a, b = rng.sample(IOI_NAMES, 2)
    return f"{a} and {b} went to the {rng.choice(IOI_PLACES)}."


def _uncounted_list(rng: random.Random) -> str:
    members = rng.sample(NUMERAL_MEMBERS, rng.randint(2, 4))
    return " and ".join(members) + " is here."


def _short_list(rng: random.Random) -> str:
    verb = rng.choice(NUMERAL_VERBS)
    words = rng.random() < 0.5
    items = []
    for member in rng.sample(NUMERAL_MEMBERS, rng.randint(1, 2)):
        n = rng.randint(1, 12)
        items.append(f"{member} {verb} in {NUMBER_WORDS[n - 1] if words else n}.")
    return " ".join(items)


def _counting(rng: random.Random) -> str:
    start = rng.randint(1, 8)
    length = rng.randint(3, 5)
    if rng.random() < 0.5:
        return "count: " + " ".join(NUMBER_WORDS[start - 1 + k] for k in range(length)) + "."
    return "count: " + " ".join(str(start + k) for k in range(length)) + "."


def _saw(rng: random.Random) -> str:
    return f"{rng.choice(IOI_NAMES)} saw the {rng.choice(NUMERAL_MEMBERS)}."


def batches(
    language: ToyLanguage, tokenizer: PreTrainedTokenizerFast, batch_size: int, max_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, attention_mask) batches of ``<bos> document <eos>``, right-padded.

    Documents are drawn ``_GROUP`` batches at a time and grouped by length (less padding), and
    the batches of a group come in a random order.
    """
    eos = tokenizer.eos_token_id
    while True:
        docs = [language.document() for _ in range(batch_size * _GROUP)]
        encoded = [ids[: max_len - 1] + [eos] for ids in tokenizer(docs)["input_ids"]]
        encoded.sort(key=len)
        order = list(range(_GROUP))
        language.rng.shuffle(order)
        for chunk in order:
            rows = encoded[chunk * batch_size : (chunk + 1) * batch_size]
            width = max(len(ids) for ids in rows)
            input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((batch_size, width), dtype=torch.long)
            for row, ids in enumerate(rows):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            yield input_ids, mask


