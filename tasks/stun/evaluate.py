"""Damage metrics of the STUN flow (Structured-Then-UNstructured pruning of mixture-of-experts
LLMs): every dense or pruned variant of the zoo model is scored the same two ways — held-out
language-modelling perplexity over non-overlapping windows of whole Shakespeare works it never
trained on, and generative exact-match accuracy on held-out GSM8K-style arithmetic problems
(batched greedy decoding, answer read after ``####``), the small-scale stand-ins for the paper's
perplexity and GSM8K columns. Everything runs on the device the model's parameters are on.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .corpus import ArithmeticProblem, Corpus, parse_answer, prompt_of

# Default evaluation sizes: ~16k held-out tokens and 160 held-out problems take about 2-4 s on two
# CPU cores for the default zoo model, so ~16 pruned variants cost about a minute in all.
PPL_TOKENS = 16_384
EM_PROBLEMS = 160


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_stream(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> list[int]:
    """Texts tokenized and joined, each followed by eos — the same layout training packs."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    return stream[:max_tokens] if max_tokens is not None else stream


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> float:
    """exp(mean next-token NLL) over non-overlapping ``seq_len`` windows of the joined texts.

    Windows never overlap, so each token is scored once with at most ``seq_len - 1`` tokens of
    context; the first token of each window is context only. ``max_tokens`` keeps only the
    first tokens of the stream, so the cost is bounded and the same tokens are always used.
    """
    return stream_perplexity(model, token_stream(tokenizer, texts, max_tokens), seq_len=seq_len,
                             batch_size=batch_size)


@torch.no_grad()
def stream_perplexity(model: torch.nn.Module, stream: Sequence[int], *, seq_len: int, batch_size: int = 8) -> float:
    """:func:`perplexity` of an already tokenized stream (non-overlapping ``seq_len`` windows)."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}: a window needs at least 2 tokens")
    stream = list(stream)
    windows = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("no text to score: the token stream has fewer than 2 tokens")
    device = _device(model)
    was_training = model.training
    model.eval()
    nll_sum, n_scored = 0.0, 0
    try:
        # Only the last window can be shorter; it goes in a batch of its own so no padding is
        # ever scored or attended to.
        full = [w for w in windows if len(w) == seq_len]
        batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        batches += [[w] for w in windows if len(w) != seq_len]
        for batch in batches:
            ids = torch.tensor(batch, dtype=torch.long, device=device)  # [B, T]
            logits = model(input_ids=ids, use_cache=False).logits.float()  # [B, T, V]
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),  # [B*(T-1), V]
                ids[:, 1:].reshape(-1),  # [B*(T-1)]
                reduction="sum",
            )
            nll_sum += nll.item()
            n_scored += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(nll_sum / n_scored)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """eos plus every token whose text contains a newline: an answer is one line."""
    ids = {tokenizer.eos_token_id}
    for token, idx in tokenizer.get_vocab().items():
        if "\n" in tokenizer.convert_tokens_to_string([token]):
            ids.add(idx)
    return sorted(ids)


@torch.no_grad()
def exact_match(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[ArithmeticProblem],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
) -> dict:
    """Share of ``problems`` whose greedy continuation of ``prompt_of(p)`` states ``#### answer``.

    Prompts are left-padded so every row's last prompt token sits at the same position and the
    batch decodes in lockstep; each prompt starts with eos, the document boundary that precedes
    every problem in training.
    """
    if not problems:
        return {"exact_match": 0.0, "n": 0, "examples": [], "correct": []}
    device = _device(model)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    stops = stop_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    correct = 0
    per_problem: list[int] = []
    examples: list[tuple[str, str, int]] = []
    try:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            prompts = [prompt_of(p) for p in chunk]
            encoded = [[eos] + tokenizer(s, add_special_tokens=False)["input_ids"] for s in prompts]
            width = max(map(len, encoded))
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # [B, P]
            mask = torch.zeros((len(encoded), width), dtype=torch.long)  # [B, P]
            for row, seq in enumerate(encoded):
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=pad,
            )  # [B, P + new]
            for p, prompt, row in zip(chunk, prompts, out[:, width:].tolist()):
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                text = tokenizer.decode(row[:cut], skip_special_tokens=True)
                # A newline can hide inside a merged token; the answer is the first line only.
                text = text.split("\n", 1)[0]
                ok = parse_answer(text) == p.answer
                correct += ok
                per_problem.append(int(ok))
                if len(examples) < 5:
                    examples.append((prompt, text, p.answer))
    finally:
        model.train(was_training)
    return {"exact_match": correct / len(problems), "n": len(problems), "examples": examples, "correct": per_problem}


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    corpus: Corpus,
    *,
    seq_len: int,
    max_ppl_tokens: int = PPL_TOKENS,
    n_problems: int = EM_PROBLEMS,
) -> dict:
    """Held-out perplexity and exact match, the two numbers every pruned variant is compared on.

    The first ``max_ppl_tokens`` held-out tokens and the first ``n_problems`` held-out problems
    are used, so every variant is scored on exactly the same data.
    """
    ppl = perplexity(model, tokenizer, corpus.heldout_text, seq_len=seq_len, max_tokens=max_ppl_tokens)
    em = exact_match(model, tokenizer, corpus.heldout_problems[:n_problems])
    return {"ppl": ppl, "exact_match": em["exact_match"], "n_problems": em["n"], "examples": em["examples"]}


def split_heldout(corpus: Corpus, val_problems: int) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """(test, validation) problems: the last ``val_problems`` held-out problems are validation."""
    probs = list(corpus.heldout_problems)
    n_val = min(val_problems, len(probs) // 2) if probs else 0
    return probs[: len(probs) - n_val], probs[len(probs) - n_val :]


def evaluate_checkpoint(model_dir: Path | str, corpus_dir: Path | str, *, device: str = "cpu", seq_len: int,
                        max_ppl_tokens: int = PPL_TOKENS, n_problems: int | None = EM_PROBLEMS, val_problems: int = 0,
                        val_ppl_tokens: int = 0, validation: bool = False) -> dict[str, Any]:
    """One variant's row of the comparison on the *test* split: perplexity of the first
    ``max_ppl_tokens`` held-out tokens and exact match of the held-out problems minus the last
    ``val_problems`` (capped at ``n_problems``; None = all), with each problem's 0/1 outcome (for
    paired intervals), the expert-weight counts (measured sparsity) and the remaining weights'
    kurtosis. ``validation=True`` adds the validation split's numbers (``val_ppl`` on the
    ``val_ppl_tokens`` held-out tokens after the test ones, ``val_exact_match`` on the last
    ``val_problems`` problems), which choose the exported checkpoint and nothing else."""
    import time

    from tasks.common.devices import compute_dtype, pick_device

    from .accounting import expert_weight_counts
    from .checkpoint import load_checkpoint
    from .corpus import load_corpus
    from .kurtosis import expert_weight_kurtosis

    t0 = time.perf_counter()
    dev = pick_device(device)
    model, tok = load_checkpoint(model_dir, device=dev, dtype=compute_dtype(dev))
    corpus = load_corpus(corpus_dir)
    test, val = split_heldout(corpus, val_problems)
    if n_problems is not None:
        test = test[:n_problems]
    stream = token_stream(tok, corpus.heldout_text, max_ppl_tokens + (val_ppl_tokens if validation else 0))
    ppl = stream_perplexity(model, stream[:max_ppl_tokens], seq_len=seq_len)
    em = exact_match(model, tok, test)
    counts = expert_weight_counts(model)
    row: dict[str, Any] = {
        # no problem set (a user's eval_data alone): exact match is not scored, not 0
        "ppl": float(ppl), "exact_match": float(em["exact_match"]) if em["n"] else None, "n_problems": em["n"],
        "correct": em["correct"],
        "expert_weights_total": sum(c["total"] for c in counts),
        "expert_weights_nonzero": sum(c["nonzero"] for c in counts),
        "experts_per_layer": [c["experts"] for c in counts],
        **expert_weight_kurtosis(model),
        "examples": em.get("examples", [])[:3],
    }
    if validation:
        val_stream = stream[max_ppl_tokens:]
        row["val_ppl"] = float(stream_perplexity(model, val_stream, seq_len=seq_len)) if len(val_stream) >= 2 else None
        row["val_exact_match"] = float(exact_match(model, tok, val)["exact_match"]) if val else None
    row["eval_seconds"] = time.perf_counter() - t0
    return row
