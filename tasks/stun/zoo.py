"""Model zoo of the STUN flow (Structured-Then-UNstructured pruning of mixture-of-experts LLMs):
the paper prunes pretrained MoEs (Mixtral, Qwen-MoE, ...) first by whole experts and then weight
by weight. No pretrained MoE can be downloaded here, so this module trains a small Mixtral-style
(or Qwen2-MoE-style, with a shared expert) causal LM from scratch on the corpus of
``corpus.py`` — Shakespeare mixed with GSM8K-style arithmetic — fast enough for two CPU cores
yet good enough that pruning damage shows up in held-out perplexity and exact match. It saves an
ordinary Hugging Face checkpoint folder (``save_pretrained``), so the pruning steps load it like
any published MoE through :func:`load_model`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import (
    AutoModelForCausalLM,
    MixtralConfig,
    PretrainedConfig,
    Qwen2MoeConfig,
)

from ..common.devices import pick_device, seed_everything
from .corpus import format_problem, load_corpus
from .evaluate import EM_PROBLEMS, PPL_TOKENS, evaluate_model, token_stream
from .tokenizer import train_bpe

Progress = Callable[[int, int, dict], None]


class ZooConfig(BaseModel):
    """How the zoo's MoE is shaped and trained. The defaults were measured on two CPU cores:
    about five minutes of training, held-out perplexity ~57 (add-one unigram baseline ~470) and
    held-out exact match ~0.59."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)

    arch: Literal["mixtral", "qwen2_moe"] = "mixtral"
    """Mixtral is the paper's main subject (8 experts, top-2, no shared expert); qwen2_moe adds an
    always-on shared expert, the other MoE family the paper prunes."""
    layers: int = Field(default=4, ge=1, le=32)
    """Four MoE layers give expert pruning several layers to choose between while one training
    step stays under half a second on two cores."""
    experts: int = Field(default=8, ge=2, le=64)
    """Mixtral's eight experts per layer: enough that pruning 25-50% of them is a real choice."""
    top_k: int = Field(default=2, ge=1, le=8)
    """Mixtral routes each token to two experts; STUN's expert pruning is defined for top-k routing."""
    hidden: int = Field(default=128, ge=16, le=4096)
    """Model width: at 128 a step of 4096 tokens takes about 0.45 s on two cores, so the
    default steps fit the budget."""
    intermediate: int = Field(default=256, ge=16, le=16384)
    """Width of each expert's SwiGLU; twice the hidden size keeps expert weights the bulk of the
    parameters, as in real MoEs, which is what makes pruning them matter."""
    shared_intermediate: int = Field(default=256, ge=16, le=16384)
    """Width of qwen2_moe's shared expert (ignored for mixtral); one expert's worth of width."""
    heads: int = Field(default=4, ge=1, le=64)
    """Four heads of 32 dims each at hidden 128."""
    kv_heads: int = Field(default=2, ge=1, le=64)
    """Grouped-query attention as in Mixtral (fewer key/value heads than query heads)."""
    vocab_size: int = Field(default=2048, ge=258, le=65536)
    """Byte-level BPE size: small, so the embedding does not dominate a 128-wide model, yet large
    enough that Shakespeare averages about 2.7 characters per token."""
    seq_len: int = Field(default=256, ge=16, le=4096)
    """Training window and perplexity window; 256 tokens hold a speech or five problems."""
    batch_size: int = Field(default=16, ge=1, le=1024)
    """Sequences per step: 4096 tokens per step at seq_len 256."""
    steps: int = Field(default=600, ge=1, le=1_000_000)
    """Optimizer steps: 600 steps (2.5M tokens, about 0.7 passes over the training plays) take
    about 4.5-5 minutes on two idle CPU cores, inside the flow's six-minute budget for the zoo."""
    lr: float = Field(default=3e-3, gt=0.0, le=1.0)
    """Peak AdamW learning rate; a model this small trained for a few hundred steps needs a high
    one, and 3e-3 trained stably (no loss spikes) with the router aux loss on."""
    warmup_steps: int = Field(default=50, ge=0, le=100_000)
    """Linear warmup before the cosine decay, so the router does not lock in on early noise."""
    router_aux_loss_coef: float = Field(default=0.01, ge=0.0, le=1.0)
    """Switch Transformer's load-balancing weight (Mixtral used 0.001): with it the balance loss
    stays at its balanced value (about top_k) throughout training, so every expert is used and
    pruning any of them costs something."""
    problem_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of training sequences that are arithmetic problems. At 0.625 exact match did not
    improve while held-out perplexity rose from ~52 to ~65; 0.5 serves both metrics."""
    n_train_problems: int = Field(default=20_000, ge=1, le=10_000_000)
    """Training problems written (keys repeat with other names and items); about as many as the
    problem half of training reads, so few are seen twice."""
    n_heldout_problems: int = Field(default=200, ge=1, le=300)
    """Held-out problems, each a distinct (template, numbers) key; evaluation scores the first
    160. The held-out quarter of the key space holds only about 320 keys, hence the cap."""
    heldout_works: int = Field(default=2, ge=1, le=20)
    """Whole plays held out for perplexity; two plays give over 100k held-out tokens."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seeds the corpus split, initialisation and batch order: a rerun gives the same model."""

    @model_validator(mode="after")
    def _shapes_fit(self) -> "ZooConfig":
        # Checked here, not only when the model is built, so a bad shape fails before any work.
        if self.hidden % self.heads:
            raise ValueError(f"heads: hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: heads={self.heads} is not divisible by kv_heads={self.kv_heads}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k: {self.top_k} exceeds experts={self.experts}")
        return self


# ---------------------------------------------------------------------------- model config


def build_moe_config(cfg: ZooConfig, vocab_size: int, tokenizer: Any) -> PretrainedConfig:
    """The ``transformers`` config of the zoo model for ``cfg.arch``."""
    if cfg.hidden % cfg.heads:
        raise ValueError(f"hidden={cfg.hidden} is not divisible by heads={cfg.heads}")
    if cfg.heads % cfg.kv_heads:
        raise ValueError(f"heads={cfg.heads} is not divisible by kv_heads={cfg.kv_heads}")
    if cfg.top_k > cfg.experts:
        raise ValueError(f"top_k={cfg.top_k} exceeds experts={cfg.experts}")
    eos = tokenizer.eos_token_id
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        num_experts_per_tok=cfg.top_k,
        # Generation appends up to a few dozen tokens to a full window; RoPE needs no table, but
        # the config must not claim a shorter context than evaluation uses.
        max_position_embeddings=2 * cfg.seq_len,
        router_aux_loss_coef=cfg.router_aux_loss_coef,
        output_router_logits=False,
        # Tied embeddings: at vocab 2048 x hidden 128 an untied head would add 262k parameters
        # that are not experts (diluting what pruning acts on) and must be learned in 600 steps.
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    )
    if cfg.arch == "mixtral":
        return MixtralConfig(
            **common,
            intermediate_size=cfg.intermediate,
            num_local_experts=cfg.experts,
            router_jitter_noise=0.0,
            sliding_window=None,
        )
    return Qwen2MoeConfig(
        **common,
        moe_intermediate_size=cfg.intermediate,
        shared_expert_intermediate_size=cfg.shared_intermediate,
        # Only used by dense MLP layers, of which there are none (mlp_only_layers=[]).
        intermediate_size=cfg.shared_intermediate,
        num_experts=cfg.experts,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        # Renormalised top-k weights, as Mixtral does, so the two archs differ only by the
        # shared expert and expert pruning rescales the survivors the same way in both.
        norm_topk_prob=True,
        use_sliding_window=False,
    )


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters, routed-expert parameters, and parameters used per token."""
    total = sum(p.numel() for p in model.parameters())
    expert = 0
    active = total
    for layer in model.model.layers:
        experts = getattr(layer.mlp, "experts", None)
        if experts is None:
            continue
        n = sum(p.numel() for p in experts.parameters())
        expert += n
        # The weight shape, not config.num_local_experts: expert pruning shrinks the tensors.
        e = experts.gate_up_proj.shape[0] if hasattr(experts, "gate_up_proj") else experts.num_experts
        k = min(model.config.num_experts_per_tok, e)
        active -= n - n * k // e
    return {"params": total, "expert_params": expert, "active_params": active}


# ---------------------------------------------------------------------------- data


class _Batches:
    """Random training windows: whole-problem windows at ``problem_fraction``, else Shakespeare.

    Problem windows start at a problem boundary (the eos before it), so the model mostly sees
    complete question → answer pairs; text windows start anywhere.
    """

    def __init__(self, text_ids: np.ndarray, problem_ids: np.ndarray, problem_starts: np.ndarray,
                 cfg: ZooConfig) -> None:
        T = cfg.seq_len
        if len(text_ids) <= T and cfg.problem_fraction < 1.0:
            raise ValueError(f"training text has {len(text_ids)} tokens, fewer than seq_len+1={T + 1}")
        if len(problem_ids) <= T and cfg.problem_fraction > 0.0:
            raise ValueError(f"training problems have {len(problem_ids)} tokens, fewer than seq_len+1={T + 1}")
        self.text_ids, self.problem_ids = text_ids, problem_ids
        self.problem_starts = problem_starts[problem_starts < len(problem_ids) - T]
        self.T, self.B = T, cfg.batch_size
        self.n_problem = round(cfg.batch_size * cfg.problem_fraction)
        self.rng = np.random.default_rng(cfg.seed)

    def next(self) -> torch.Tensor:
        rows = []
        for _ in range(self.n_problem):
            s = int(self.rng.choice(self.problem_starts))
            rows.append(self.problem_ids[s : s + self.T])
        for _ in range(self.B - self.n_problem):
            s = int(self.rng.integers(0, len(self.text_ids) - self.T))
            rows.append(self.text_ids[s : s + self.T])
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # [B, T]


def _problem_stream(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """eos + problem, repeated: the same boundary token that opens every evaluation prompt."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    starts, stream = [], []
    for ids in encoded:
        starts.append(len(stream))
        stream.append(eos)
        stream.extend(ids)
    return np.asarray(stream, dtype=np.int32), np.asarray(starts, dtype=np.int64)


def _lr_at(step: int, cfg: ZooConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def _unigram_ppl(train_ids: np.ndarray, heldout_ids: list[int], vocab_size: int) -> float:
    """Perplexity of add-one unigram frequencies: the floor a trained LM must clearly beat."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[np.asarray(heldout_ids)].mean()))


# ---------------------------------------------------------------------------- training


def train_zoo(
    cfg: ZooConfig,
    corpus_dir: Path,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    device: str = "auto",
    eval_ppl_tokens: int = PPL_TOKENS,
    eval_problems: int = EM_PROBLEMS,
) -> dict:
    """Train tokenizer and MoE on ``corpus_dir``, save both into ``out_dir``, return metrics.

    Metrics: ``dense_ppl`` / ``dense_exact_match`` (held-out, by :func:`evaluate_model` with its
    default sizes unless ``eval_ppl_tokens`` / ``eval_problems`` say otherwise),
    ``unigram_ppl`` (baseline on the same tokens), ``train_seconds``, ``params``,
    ``expert_params``, ``active_params``, ``final_loss`` and a sparse ``loss_curve``.
    ``device="auto"`` trains on a GPU where one is visible (bf16 autocast there, fp32 weights).
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    corpus = load_corpus(corpus_dir)
    dev = pick_device(device)
    seed_everything(cfg.seed)

    problem_texts = [format_problem(p) for p in corpus.train_problems]
    # A few thousand problems teach BPE the problem vocabulary; all of them would tilt the
    # merges away from Shakespeare, which is the harder half of the task.
    tokenizer = train_bpe(corpus.train_text + problem_texts[:2000], cfg.vocab_size)
    vocab_size = len(tokenizer)

    text_ids = np.asarray(token_stream(tokenizer, corpus.train_text), dtype=np.int32)
    problem_ids, problem_starts = _problem_stream(tokenizer, problem_texts)
    batches = _Batches(text_ids, problem_ids, problem_starts, cfg)

    moe_config = build_moe_config(cfg, vocab_size, tokenizer)
    torch.manual_seed(cfg.seed)
    # On CPU the per-expert loop ("eager") measured as fast as grouped_mm at these sizes and
    # batched_mm ~80x slower; on a GPU the library's default kernel is used. This choice is not
    # saved in config.json, so it never follows the checkpoint.
    impl = {"experts_implementation": "eager"} if dev.type == "cpu" else {}
    model = AutoModelForCausalLM.from_config(moe_config, **impl).to(dev)
    model.train()

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    loss_curve: list[tuple[int, float]] = []
    ema: float | None = None
    every = max(1, min(25, cfg.steps // 20))
    t_train = time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        ids = batches.next().to(dev)  # [B, T]
        # bf16 autocast on GPUs (halves activation memory, tensor-core matmuls); fp32 on CPU.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(input_ids=ids, labels=ids, output_router_logits=True, use_cache=False)
        # out.loss already includes router_aux_loss_coef * aux_loss; log the LM part alone.
        lm_loss = out.loss - cfg.router_aux_loss_coef * out.aux_loss if out.aux_loss is not None else out.loss
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = float(lm_loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"training diverged at step {step}: loss={lv}")
        ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        if step % every == 0 or step == cfg.steps - 1:
            loss_curve.append((step, lv))
            if progress is not None:
                aux = float(out.aux_loss.detach()) if out.aux_loss is not None else 0.0
                progress(step + 1, cfg.steps, {"loss": lv, "loss_ema": ema, "aux_loss": aux,
                                               "lr": _lr_at(step, cfg)})
    train_seconds = time.time() - t_train

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    t_eval = time.time()
    metrics = evaluate_model(model, tokenizer, corpus, seq_len=cfg.seq_len,
                             max_ppl_tokens=eval_ppl_tokens, n_problems=eval_problems)
    eval_seconds = time.time() - t_eval
    heldout_ids = token_stream(tokenizer, corpus.heldout_text, eval_ppl_tokens)
    return {
        "dense_ppl": metrics["ppl"],
        "dense_exact_match": metrics["exact_match"],
        "unigram_ppl": _unigram_ppl(text_ids, heldout_ids, vocab_size),
        "examples": metrics["examples"],
        "train_seconds": train_seconds,
        "total_seconds": time.time() - t0,
        "eval_seconds": eval_seconds,
        "final_loss": ema,
        "loss_curve": loss_curve,
        "train_tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "vocab_size": vocab_size,
        **count_params(model),
    }
