"""Tiny random models for tests and quick sweeps: built from a small config, never downloaded.

The tokenizer is a byte-level BPE trained in milliseconds by the `tokenizers` library on a fixed corpus, so any text
(any lm-eval prompt) tokenizes and the result is identical on every machine.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

_CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo. The opposite of hot is cold.",
    "Question: is the sky blue? Answer: yes. Question: can fish fly? Answer: no.",
    "3 + 4 = 7. 2 + 2 = 4. 9 + 0 = 9. one two three four five six seven eight nine ten",
    "A man is sitting on a roof. He starts pulling up roofing. The woman walks to the store and buys milk.",
    "Which of these is a mammal? A. shark B. dolphin C. trout D. eel. True or False? Neither.",
    "the of and to in is was for on that with as by at from it an be are this which or have had not but",
]

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def train_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="right",
    )


def build(family: str, config_overrides: dict, seed: int, dtype: torch.dtype = torch.float32):
    """A random model of `family` ('gemma2', 'llama', ...) sized by `config_overrides`; same seed, same weights."""
    tokenizer = train_tokenizer()
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **config_overrides,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # transformers' init draws from the global RNG; restore it afterwards
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval(), tokenizer
