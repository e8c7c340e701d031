"""Tokenizer of the model zoo of the STUN flow (MoE pruning): a byte-level BPE trained on the zoo's
own corpus, with every digit its own token so that the small MoE can learn column arithmetic on
the GSM8K-style problems, and one special token ``<|endoftext|>`` that serves as bos, eos and pad.
It is wrapped as a ``PreTrainedTokenizerFast`` so it saves and reloads with the model folder
(``AutoTokenizer.from_pretrained(dir)``) without any network access.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOT = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with ``vocab_size`` entries (special token included) on ``texts``."""
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size}: byte-level BPE needs at least 258 (256 bytes + special)")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # Digits first: a number's digits never merge, so "47" and "74" share the same two tokens and
    # the model can learn carrying digit by digit instead of memorising every number as a token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # No post-processor: bos is never added implicitly, so a prompt is exactly the text given and
    # packed training windows and evaluation windows see the same tokens for the same text.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: exact round trip
        min_frequency=2,
        show_progress=False,
    )

    def batches() -> Iterator[list[str]]:
        buf: list[str] = []
        for t in texts:
            buf.append(t)
            if len(buf) >= 256:
                yield buf
                buf = []
        if buf:
            yield buf

    tok.train_from_iterator(batches(), trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The ``transformers`` view of a raw ``tokenizers`` object, with the special tokens named."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=None,
        # Cleaning up spaces before punctuation would break the exact round trip of text.
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=1_000_000,
    )
