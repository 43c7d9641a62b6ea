"""Builders for tiny offline models and independent reference computations used by the tests.

Everything here is built from scratch (no network): a word-level tokenizer over a small vocabulary,
tiny random GPT-2 and Llama models saved with ``save_pretrained``, and tasks whose answers the
random models happen to prefer. The reference computations use plain Hugging Face forwards or
plain bridge hooks, never the engine under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_circuits.tasks import Task
from pytest_circuits.tasks.builtin import IOI_NAMES, IOI_OBJECTS, IOI_PLACES, NUMERAL_MEMBERS

if TYPE_CHECKING:  # torch is imported inside the functions, so conftest stays cheap
    import torch

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
