"""Model zoo of the STUN flow (Structured-Then-UNstructured pruning of mixture-of-experts LLMs):
the paper prunes pretrained MoEs (Mixtral, Qwen-MoE, ...) first by whole experts and then weight
by weight. No pretrained MoE can be downloaded here, so this module trains a small Mixtral-style
(or Qwen2-MoE-style, with a shared expert) causal LM from scratch on the corpus of
``corpus.py`` — Shakespeare mixed with GSM8K-style arithmetic — fast enough for two CPU cores
yet good enough that pruning damage shows up in held-out perplexity and exact match. Training is
a recipe (:class:`ZooRecipe`) on the shared engine :mod:`tasks.common.training`, so it resumes
from its last checkpoint after a kill and a batch is a pure function of (seed, step). It saves
an ordinary Hugging Face checkpoint folder (``save_pretrained``), so the pruning steps load it
like any published MoE.

Reproducibility: the same config gives bit-identical weights on the same kind of machine. What
decides the bits besides the config: the number of torch threads (``ZooConfig.threads``, fixed
by the config, never taken from the machine), and the CPU's vector ISA, which selects ATen's and
MKL's kernels (AVX-512 and AVX2 round differently; measured: different weights after 40 steps).
The ISA is a property of the process, chosen when torch starts: ``ATEN_CPU_CAPABILITY`` and
``MKL_CBWR`` in the worker environment pin it across machines; nothing inside a running process
can. On a GPU, bf16 autocast and cuBLAS make the weights depend on the GPU model, and even on one
GPU bit-identical reruns are not promised: the experts' ``grouped_mm`` kernel and the token
scatter (``index_add_``) of their backward pass may accumulate in a nondeterministic order (not
verified here: the machines this was built on have no GPU).
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    MixtralConfig,
    PretrainedConfig,
    Qwen2MoeConfig,
)

from ..common.devices import pick_device, seed_everything
from ..common.training import TrainingConfig, load_weights, train
from .config import ZooConfig
from .corpus import format_problem, load_corpus
from .evaluate import EM_PROBLEMS, PPL_TOKENS, evaluate_model, token_stream
from .tokenizer import train_bpe

Progress = Callable[[int, int, dict], None]


# ---------------------------------------------------------------------------- model config


def build_moe_config(cfg: ZooConfig, vocab_size: int, tokenizer: Any) -> PretrainedConfig:
    """The ``transformers`` config of the zoo model for ``cfg.arch`` (shapes checked by ZooConfig)."""
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


# ---------------------------------------------------------------------------- training recipe


def lr_at(step: int, cfg: ZooConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


class ZooRecipe:
    """The zoo LM's training on :func:`tasks.common.training.train`: one model (``lm``), AdamW
    with weight decay on matrices only, warmup + cosine learning rate, the engine's gradient
    clipping at 1 and bf16 autocast on GPUs.

    A batch holds ``problem_fraction`` whole-problem windows (starting at a problem boundary, the
    eos before it, so the model mostly sees complete question → answer pairs) and Shakespeare
    windows starting anywhere. Its window starts are drawn from a generator seeded by (seed,
    step, rank) alone, so a run resumed from a checkpoint sees exactly the batches the unbroken
    run would have, and initialisation is seeded by ``seed`` in :meth:`build`.
    """

    def __init__(self, cfg: ZooConfig, moe_config: PretrainedConfig, text_ids: np.ndarray, problem_ids: np.ndarray,
                 problem_starts: np.ndarray, device_type: str) -> None:
        T = cfg.seq_len
        if len(text_ids) <= T and cfg.problem_fraction < 1.0:
            raise ValueError(f"training text has {len(text_ids)} tokens, fewer than seq_len+1={T + 1}")
        if len(problem_ids) <= T and cfg.problem_fraction > 0.0:
            raise ValueError(f"training problems have {len(problem_ids)} tokens, fewer than seq_len+1={T + 1}")
        self.cfg, self.moe_config = cfg, moe_config
        self.steps, self.micro_batch = cfg.steps, cfg.batch_size
        self.text_ids, self.problem_ids = text_ids, problem_ids
        self.problem_starts = problem_starts[problem_starts < len(problem_ids) - T]
        self.n_problem = round(cfg.batch_size * cfg.problem_fraction)
        # On CPU the per-expert loop ("eager") measured as fast as grouped_mm at these sizes and
        # batched_mm ~80x slower; on a GPU the library's default kernel is used. This choice is
        # not saved in config.json, so it never follows the checkpoint.
        self.model_kwargs = {"experts_implementation": "eager"} if device_type == "cpu" else {}

    def build(self) -> dict[str, torch.nn.Module]:
        torch.manual_seed(self.cfg.seed)
        model = AutoModelForCausalLM.from_config(self.moe_config, **self.model_kwargs)
        model.train()
        return {"lm": model}

    def optimizer(self, name: str, module: torch.nn.Module) -> torch.optim.Optimizer:
        decay = [p for n, p in module.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in module.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, betas=(0.9, 0.95), eps=1e-8,
        )

    def schedule(self, name: str, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr = lr_at(step, self.cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        T = self.cfg.seq_len
        rng = np.random.default_rng((self.cfg.seed, step, rank))
        starts = rng.choice(self.problem_starts, size=self.n_problem) if self.n_problem else []
        rows = [self.problem_ids[s : s + T] for s in starts]
        n_text = self.cfg.batch_size - self.n_problem
        rows += [self.text_ids[s : s + T] for s in rng.integers(0, len(self.text_ids) - T, size=n_text)] if n_text else []
        return {"input_ids": torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)}  # [B, T]

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        ids = batch["input_ids"]
        out = models["lm"](input_ids=ids, labels=ids, output_router_logits=True, use_cache=False)
        # out.loss already includes router_aux_loss_coef * aux_loss; log the LM part alone.
        aux = out.aux_loss
        lm_loss = out.loss - self.cfg.router_aux_loss_coef * aux if aux is not None else out.loss
        return out.loss, {"loss": float(lm_loss.detach()), "aux_loss": float(aux.detach()) if aux is not None else 0.0,
                          "lr": lr_at(step, self.cfg)}


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


def _unigram_ppl(train_ids: np.ndarray, heldout_ids: list[int], vocab_size: int) -> float:
    """Perplexity of add-one unigram frequencies: the floor a trained LM must clearly beat."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[np.asarray(heldout_ids)].mean()))


# ---------------------------------------------------------------------------- training

#: most steps between training checkpoints: a kill loses at most this much work (~45 s at the
#: defaults); a short run checkpoints at least six times
CHECKPOINT_EVERY = 100


def train_zoo(
    cfg: ZooConfig,
    corpus_dir: Path,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    device: str = "auto",
    eval_ppl_tokens: int = PPL_TOKENS,
    eval_problems: int = EM_PROBLEMS,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int | None = None,
) -> dict:
    """Train tokenizer and MoE on ``corpus_dir``, save both into ``out_dir``, return metrics.

    Training checkpoints go to ``checkpoint_dir`` (kept by the caller across a crash: a rerun
    resumes from the newest one); without one they go to a hidden folder inside ``out_dir``
    that is removed when training ends. Metrics: ``dense_ppl`` / ``dense_exact_match``
    (held-out, by :func:`evaluate_model` with its default sizes unless ``eval_ppl_tokens`` /
    ``eval_problems`` say otherwise), ``unigram_ppl`` (baseline on the same tokens),
    ``train_seconds``, ``resumed_from_step``, ``threads`` / ``cpu_capability`` / ``torch`` (what
    besides the config decides the bits), ``params``, ``expert_params``,
    ``active_params``, ``final_loss`` (mean LM loss of the last four logged steps) and a sparse
    ``loss_curve``. ``device="auto"`` trains on a GPU where one is visible (bf16 autocast
    there, fp32 weights). The caller sets the thread count (``cfg.threads``).
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
    recipe = ZooRecipe(cfg, build_moe_config(cfg, vocab_size, tokenizer), text_ids, problem_ids, problem_starts,
                       dev.type)

    own_checkpoints = checkpoint_dir is None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / ".checkpoints"
    every = max(1, min(25, cfg.steps // 20))
    # Plain torch, not DeepSpeed: ZeRO buys nothing at this size, and one code path keeps the
    # zoo's numbers the same with and without a GPU backend installed.
    checkpoint_every = checkpoint_every or max(1, min(CHECKPOINT_EVERY, cfg.steps // 6))
    tcfg = TrainingConfig(backend="torch", checkpoint_every=checkpoint_every, keep_checkpoints=1,
                          grad_clip=1.0, log_every=every).on(dev.type)

    def report(done: int, total: int, logs: dict) -> None:
        if progress is not None:
            progress(done, total, {k.split("/", 1)[-1]: v for k, v in logs.items()})

    res = train(recipe, tcfg, ckpt_dir, progress=report)
    model = recipe.build()["lm"]
    model.load_state_dict(load_weights(res.checkpoint, "lm"))
    model.to(dev).eval()
    if own_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    t_eval = time.time()
    metrics = evaluate_model(model, tokenizer, corpus, seq_len=cfg.seq_len,
                             max_ppl_tokens=eval_ppl_tokens, n_problems=eval_problems)
    eval_seconds = time.time() - t_eval
    heldout_ids = token_stream(tokenizer, corpus.heldout_text, eval_ppl_tokens)
    curve = [(int(h["step"]), float(h["lm/loss"])) for h in res.history if "lm/loss" in h]
    tail = [loss for _, loss in curve[-4:]]
    return {
        "dense_ppl": metrics["ppl"],
        "dense_exact_match": metrics["exact_match"],
        "unigram_ppl": _unigram_ppl(text_ids, heldout_ids, vocab_size),
        "examples": metrics["examples"],
        "train_seconds": res.wall_seconds,
        "resumed_from_step": res.start_step,
        # what besides the config decides the bits (module docstring): recorded, so a table that
        # differs from another machine's can be traced to its kernels
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "device": res.device,
        "precision": res.precision,
        "total_seconds": time.time() - t0,
        "eval_seconds": eval_seconds,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "loss_curve": curve,
        "train_tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "vocab_size": vocab_size,
        **count_params(model),
    }
