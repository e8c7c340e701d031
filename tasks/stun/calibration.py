"""Calibration data for STUN: token sequences drawn from the training mix.

Profiling (router co-activations), Wanda/OWL statistics and NAEE's reconstruction loss all
run on the same calibration set: sequences of ``seq_len`` tokens cut from the training text
and training problems, in the proportion the model was trained on. Held-out data is never used.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch


def calibration_ids(tokenizer: Any, texts: list[str], problems: list[str], *, n: int, seq_len: int,
                    seed: int, problem_share: float = 0.5) -> torch.Tensor:
    """[n, seq_len] token ids: half packed problem sequences, half text windows (by default)."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token or ""
    n_prob = round(n * problem_share) if problems else 0
    rows: list[list[int]] = []
    text_ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if len(text_ids) <= seq_len:
        raise ValueError(f"calib_seq_len={seq_len} exceeds the {len(text_ids)} tokens of calibration text")
    for _ in range(n - n_prob):
        start = rng.randrange(0, len(text_ids) - seq_len)
        rows.append(text_ids[start : start + seq_len])
    for _ in range(n_prob):
        ids: list[int] = []
        while len(ids) < seq_len:
            ids += tokenizer(rng.choice(problems) + eos, add_special_tokens=False)["input_ids"]
        rows.append(ids[:seq_len])
    rng.shuffle(rows)
    return torch.tensor(rows, dtype=torch.long)


CALIB_FILE = "calib.safetensors"


def build_calibration(model_dir: Path | str, corpus_dir: Path | str, out_dir: Path | str, *, n: int, seq_len: int,
                      seed: int, problem_share: float = 0.5) -> Path:
    """Draw the calibration set with the model's own tokenizer and write ``calib.safetensors``."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from .corpus import format_problem, load_corpus

    tok = AutoTokenizer.from_pretrained(model_dir)
    corpus = load_corpus(corpus_dir)
    ids = calibration_ids(tok, corpus.train_text, [format_problem(p) for p in corpus.train_problems],
                          n=n, seq_len=seq_len, seed=seed, problem_share=problem_share)
    out = Path(out_dir) / CALIB_FILE
    save_file({"input_ids": ids.contiguous()}, str(out))
    return out


def load_calibration(calib_dir: Path | str) -> torch.Tensor:
    """The [N, T] calibration token ids a calibration step wrote."""
    from safetensors.torch import load_file

    return load_file(str(Path(calib_dir) / CALIB_FILE))["input_ids"]
