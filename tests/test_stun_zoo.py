"""Specification of the STUN flow's model zoo: the corpus (Shakespeare split by whole works,
GSM8K-style problems with correct worked answers and a leak-free held-out split), the digit-
splitting byte-level tokenizer, the MoE trainer and checkpoint round trip, and the two damage
metrics (perplexity, exact match)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.stun.corpus import (
    TEMPLATES,
    ArithmeticProblem,
    build_corpus,
    format_problem,
    generate_problems,
    load_corpus,
    parse_answer,
    prompt_of,
    shakespeare_works,
)
from tasks.stun.evaluate import evaluate_model, exact_match, perplexity, token_stream
from tasks.stun.tokenizer import EOT, train_bpe
from tasks.stun.checkpoint import load_checkpoint as load_model
from tasks.stun.zoo import ZooConfig, build_moe_config, count_params, train_zoo

STEP = re.compile(r"(\d+)([+\-*])(\d+)=(\d+)\.")
# Evaluation sizes for the tiny models: enough to exercise every code path, cheap to generate.
EVAL = dict(eval_ppl_tokens=2048, eval_problems=24)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from two threads, and on a busy machine thread barriers made
    generation ~10x slower; the setting is restored for whatever runs next."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _eval_step(a: str, op: str, b: str) -> int:
    x, y = int(a), int(b)
    return {"+": x + y, "-": x - y, "*": x * y}[op]


# ---------------------------------------------------------------------------- problems


def test_problems_are_deterministic_in_seed():
    assert generate_problems(200, seed=3) == generate_problems(200, seed=3)
    assert generate_problems(200, seed=3) != generate_problems(200, seed=4)


def test_worked_answers_do_correct_arithmetic_and_end_with_the_answer():
    problems = generate_problems(2000, seed=0)
    assert {p.template for p in problems} == {t.name for t in TEMPLATES}
    for p in problems:
        steps = STEP.findall(p.solution)
        assert 1 <= len(steps) <= 2, p.solution
        assert "".join(f"{a}{op}{b}={c}." for a, op, b, c in steps) == p.solution.replace(" ", "")
        for a, op, b, c in steps:
            assert _eval_step(a, op, b) == int(c), p.solution
        if len(steps) == 2:  # the second step uses the first step's result
            assert steps[0][3] in (steps[1][0], steps[1][2]), p.solution
        assert int(steps[-1][3]) == p.answer >= 0
        text = format_problem(p)
        assert text.endswith(f"#### {p.answer}")
        assert text.startswith(prompt_of(p)) and p.question in prompt_of(p)
        assert parse_answer(text[len(prompt_of(p)):]) == p.answer
        for n in p.numbers:  # every number of the key is stated in the question
            assert re.search(rf"\b{n}\b", p.question), (p.numbers, p.question)


def test_parse_answer_reads_the_number_after_the_marker():
    assert parse_answer(" 3*4=12. 12+5=17. #### 17") == 17
    assert parse_answer("#### -4") == -4
    assert parse_answer("####42 apples") == 42
    assert parse_answer("10+2=12. #### 12 #### 13") == 12
    assert parse_answer("3*4=12. 12+5=17.") is None
    assert parse_answer("#### seventeen") is None
    assert parse_answer("") is None


# ---------------------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    counts = build_corpus(d, seed=0, heldout_works=2, n_train_problems=3000, n_heldout_problems=200)
    assert counts["train_problems"] == 3000 and counts["heldout_problems"] == 200
    assert counts["heldout_works"] == 2
    return d


def test_corpus_holds_out_whole_works_and_unseen_problems(corpus_dir: Path):
    c = load_corpus(corpus_dir)
    works = shakespeare_works()
    assert not any(name.endswith("_f") for name in works)  # First Folio duplicates skipped
    assert len(c.train_works) + len(c.heldout_works) == len(works)
    assert not set(c.train_works) & set(c.heldout_works)
    assert c.heldout_text == [works[n] for n in c.heldout_works]
    # No held-out play appears inside the training text under any name.
    for text in c.heldout_text:
        probe = text[len(text) // 2 : len(text) // 2 + 300]
        assert not any(probe in t for t in c.train_text)
    train_keys = {p.key for p in c.train_problems}
    heldout_keys = [p.key for p in c.heldout_problems]
    assert len(set(heldout_keys)) == len(heldout_keys) == 200
    assert not train_keys & set(heldout_keys)
    assert not {p.question for p in c.train_problems} & {p.question for p in c.heldout_problems}
    assert all(isinstance(p, ArithmeticProblem) for p in c.train_problems[:10])


def test_corpus_is_deterministic(corpus_dir: Path, tmp_path: Path):
    build_corpus(tmp_path, seed=0, heldout_works=2, n_train_problems=3000, n_heldout_problems=200)
    for name in ("train_problems.jsonl", "heldout_problems.jsonl", "heldout_text.jsonl"):
        assert (tmp_path / name).read_bytes() == (corpus_dir / name).read_bytes(), name


def test_load_corpus_names_missing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="train_text.jsonl"):
        load_corpus(tmp_path)


# ---------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def small_tokenizer(corpus_dir: Path):
    c = load_corpus(corpus_dir)
    texts = [t[:40_000] for t in c.train_text[:4]] + [format_problem(p) for p in c.train_problems[:500]]
    return train_bpe(texts, vocab_size=400)


def test_tokenizer_round_trips_text_exactly(small_tokenizer, tmp_path: Path):
    tok = small_tokenizer
    samples = [
        "HAMLET.\nTo be, or not to be, that is the question:\n\n  [Exit.]\t\n",
        "Question: Anna has 30 apples.\nAnswer: 30-5=25. #### 25",
        "caf\u00e9 na\u00efve \u00ff \u2014 \u00e6on  double  spaces ",
    ]
    for s in samples:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for s in samples:
        assert again(s, add_special_tokens=False)["input_ids"] == tok(s, add_special_tokens=False)["input_ids"]
        assert again.decode(again(s, add_special_tokens=False)["input_ids"]) == s
    assert again.eos_token == again.pad_token == again.bos_token == EOT
    assert again.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids(EOT)
    assert len(tok) == 400


def test_tokenizer_splits_every_digit(small_tokenizer):
    tok = small_tokenizer
    ids = tok("In 1599 he paid 12345 ducats", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert digit_pieces == list("1599") + list("12345")
    # A number is the same digit tokens wherever it stands.
    assert tok("x 47", add_special_tokens=False)["input_ids"][-2:] == tok("(47", add_special_tokens=False)["input_ids"][-2:]
    assert tok("", add_special_tokens=False)["input_ids"] == []  # nothing added implicitly


# ---------------------------------------------------------------------------- config and archs


class _TokStub:
    eos_token_id = bos_token_id = pad_token_id = 0


def test_zoo_config_is_strict_and_documented():
    cfg = ZooConfig()
    assert cfg.arch == "mixtral" and cfg.top_k <= cfg.experts
    for name, f in ZooConfig.model_fields.items():
        assert f.description and f.description.strip(), f"{name} has no docstring"
    with pytest.raises(ValueError):
        ZooConfig(unknown=1)
    with pytest.raises(ValueError):
        ZooConfig(experts=0)
    with pytest.raises(ValueError):
        ZooConfig(problem_fraction=1.5)
    with pytest.raises(ValueError):
        ZooConfig(arch="llama")


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_both_archs_build_and_run_forward(arch: str):
    cfg = ZooConfig(arch=arch, layers=2, experts=4, top_k=2, hidden=32, intermediate=48,
                    shared_intermediate=40, heads=4, kv_heads=2, seq_len=16)
    mc = build_moe_config(cfg, 300, _TokStub())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(mc).eval()
    assert type(model).__name__ == {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}[arch]
    ids = torch.randint(0, 300, (3, 16))
    logits = model(input_ids=ids).logits
    assert logits.shape == (3, 16, 300) and torch.isfinite(logits).all()
    mlp = model.model.layers[1].mlp
    assert mlp.gate.weight.shape == (4, 32)
    assert mlp.experts.gate_up_proj.shape == (4, 2 * 48, 32)
    assert mlp.experts.down_proj.shape == (4, 32, 48)
    assert hasattr(mlp, "shared_expert") == (arch == "qwen2_moe")
    if arch == "qwen2_moe":
        assert mc.decoder_sparse_step == 1 and mc.mlp_only_layers == []
        assert mlp.shared_expert.gate_proj.weight.shape == (40, 32)
    n = count_params(model)
    assert n["expert_params"] == 2 * 4 * 3 * 32 * 48
    assert n["expert_params"] < n["params"] and n["active_params"] < n["params"]
    assert mc.eos_token_id == 0 and mc.output_router_logits is False


# ---------------------------------------------------------------------------- perplexity


class _Uniform(torch.nn.Module):
    """Predicts every token with equal probability: its perplexity is the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.dummy)


def test_uniform_model_has_perplexity_equal_to_vocab_size(small_tokenizer):
    ppl = perplexity(_Uniform(400), small_tokenizer, ["To be, or not to be."] * 5, seq_len=7, batch_size=2)
    assert ppl == pytest.approx(400.0, rel=1e-5)


def test_perplexity_is_exp_mean_nll_over_non_overlapping_windows(small_tokenizer):
    tok = small_tokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        build_moe_config(ZooConfig(layers=1, experts=2, top_k=1, hidden=16, intermediate=16, heads=2,
                                   kv_heads=1, seq_len=16), len(tok), tok)
    ).eval()
    texts = ["Now is the winter of our discontent", "Made glorious summer by this sun of York."]
    stream = token_stream(tok, texts)
    assert stream == (tok(texts[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                      + tok(texts[1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    seq_len, max_tokens = 8, 21
    kept = stream[:max_tokens]
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(kept), seq_len):  # windows 8, 8, 5: each scored on its own
            w = torch.tensor([kept[i : i + seq_len]])
            logp = torch.log_softmax(model(input_ids=w).logits[0], -1)
            for t in range(1, w.shape[1]):
                nll -= logp[t - 1, w[0, t]].item()
                n += 1
    assert n == 7 + 7 + 4
    got = perplexity(model, tok, texts, seq_len=seq_len, max_tokens=max_tokens, batch_size=3)
    assert got == pytest.approx(math.exp(nll / n), rel=1e-5)
    # Batching never changes the number.
    assert perplexity(model, tok, texts, seq_len=seq_len, max_tokens=max_tokens, batch_size=1) == pytest.approx(got, rel=1e-5)


# ---------------------------------------------------------------------------- training


TINY = dict(layers=2, experts=4, top_k=2, hidden=32, intermediate=64, shared_intermediate=32,
            heads=2, kv_heads=1, vocab_size=320, seq_len=64, batch_size=8, lr=5e-3, warmup_steps=5,
            router_aux_loss_coef=0.01, problem_fraction=0.5, seed=0)


@pytest.fixture(scope="module")
def tiny_corpus(corpus_dir: Path, tmp_path_factory) -> Path:
    """The real corpus with each training work cut short, so tokenizing it takes no time."""
    d = tmp_path_factory.mktemp("tiny_corpus")
    for name in ("heldout_text.jsonl", "train_problems.jsonl", "heldout_problems.jsonl"):
        (d / name).write_bytes((corpus_dir / name).read_bytes())
    rows = [json.loads(line) for line in (corpus_dir / "train_text.jsonl").read_text().splitlines()]
    (d / "train_text.jsonl").write_text(
        "".join(json.dumps({"work": r["work"], "text": r["text"][:8000]}) + "\n" for r in rows[:8])
    )
    return d


@pytest.fixture(scope="module")
def tiny_model(tiny_corpus: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    losses: list[float] = []
    steps: list[int] = []

    def progress(step: int, total: int, info: dict) -> None:
        assert total == 40
        steps.append(step)
        losses.append(info["loss"])

    metrics = train_zoo(ZooConfig(steps=40, **TINY), tiny_corpus, out, progress, device="cpu", **EVAL)
    return out, metrics, steps, losses


def test_tiny_model_learns_and_reports_metrics(tiny_model):
    out, metrics, steps, losses = tiny_model
    assert len(steps) >= 5 and steps[-1] == 40 and steps == sorted(steps)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # it learns
    assert math.log(320) - 0.5 < losses[0] < math.log(320) + 1.5  # starts near uniform
    for key in ("dense_ppl", "dense_exact_match", "train_seconds", "params", "expert_params"):
        assert key in metrics, key
    assert 1.0 < metrics["dense_ppl"] < 320
    assert 0.0 <= metrics["dense_exact_match"] <= 1.0
    assert metrics["expert_params"] == 2 * 4 * 3 * 32 * 64 < metrics["params"]


def test_saved_model_reloads_with_identical_logits(tiny_model, tiny_corpus: Path):
    out, *_ = tiny_model
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model, tok = load_model(out)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not model.training and len(tok) == 320
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 128, 32)
    ids = torch.tensor([token_stream(tok, ["Friends, Romans, countrymen, lend me your ears"])])
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = plain(input_ids=ids).logits
        again, _ = load_model(out)
        c = again(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert torch.equal(a, c)
    # The metrics train_zoo reported are those of the saved checkpoint.
    _, metrics, *_ = tiny_model
    res = evaluate_model(model, tok, load_corpus(tiny_corpus), seq_len=64, max_ppl_tokens=2048, n_problems=24)
    assert res["ppl"] == pytest.approx(metrics["dense_ppl"], rel=1e-4)
    assert res["exact_match"] == metrics["dense_exact_match"]


def test_exact_match_is_independent_of_batching(tiny_model, tiny_corpus: Path):
    out, *_ = tiny_model
    model, tok = load_model(out)
    problems = load_corpus(tiny_corpus).heldout_problems[:7]
    one = exact_match(model, tok, problems, max_new_tokens=10, batch_size=1)
    many = exact_match(model, tok, problems, max_new_tokens=10, batch_size=4)
    assert one["n"] == many["n"] == 7
    assert [e[1] for e in one["examples"]] == [e[1] for e in many["examples"]]  # left padding is invisible
    assert one["exact_match"] == many["exact_match"]
    assert [e[0] for e in one["examples"]] == [prompt_of(p) for p in problems[:5]]
    assert [e[2] for e in one["examples"]] == [p.answer for p in problems[:5]]
    assert all("\n" not in e[1] for e in one["examples"])


class _Oracle(torch.nn.Module):
    """A stand-in model whose generate() writes given continuations: isolates the scoring."""

    def __init__(self, tok, continuations: dict[str, str]) -> None:
        super().__init__()
        self.tok, self.cont = tok, continuations
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
            new = self.tok(self.cont[prompt], add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(ids + new + [self.tok.eos_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_exact_match_scores_the_first_answer_line(small_tokenizer):
    tok = small_tokenizer
    ps = generate_problems(4, seed=1)
    cont = {
        prompt_of(ps[0]): f" {ps[0].solution} #### {ps[0].answer}",  # right
        prompt_of(ps[1]): f" #### {ps[1].answer + 1}",  # wrong
        prompt_of(ps[2]): f" 1+1=2.\n#### {ps[2].answer}",  # right answer only after a newline
        prompt_of(ps[3]): f" #### {ps[3].answer}",  # right, without working
    }
    res = exact_match(_Oracle(tok, cont), tok, ps, max_new_tokens=40, batch_size=3)
    assert res["n"] == 4 and res["exact_match"] == pytest.approx(0.5)


def test_qwen2_moe_is_trainable_by_config(tiny_corpus: Path, tmp_path: Path):
    cfg = ZooConfig(arch="qwen2_moe", steps=4, **TINY)
    metrics = train_zoo(cfg, tiny_corpus, tmp_path, device="cpu", **EVAL)
    model, _ = load_model(tmp_path)
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
    assert model.config.shared_expert_intermediate_size == 32
    assert math.isfinite(metrics["dense_ppl"])


def test_load_model_names_a_missing_path(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(missing)


# ---------------------------------------------------------------------------- reproducibility and resume


def test_first_losses_are_pinned(tiny_model):
    """Initialisation, data order and the loss are a function of the config: these numbers move
    only when the maths, the data or the batch order changes (tolerance: kernel rounding)."""
    _, metrics, steps, losses = tiny_model
    assert steps[:4] == [1, 2, 3, 4]  # the engine reports every step
    assert losses[:4] == pytest.approx([5.75831, 5.740844, 5.698238, 5.621891], rel=2e-4)
    assert metrics["resumed_from_step"] == 0 and metrics["threads"] == 1


_TRAIN_CHILD = """
import hashlib, json, sys, time
from pathlib import Path
import torch
from tasks.stun.zoo import ZooConfig, train_zoo
cfg = ZooConfig(**json.loads(sys.argv[1]))
torch.set_num_threads(cfg.threads)  # what the zoo step does
out, ckpt, slow = Path(sys.argv[3]), (Path(sys.argv[4]) if sys.argv[4] else None), float(sys.argv[5])
m = train_zoo(cfg, Path(sys.argv[2]), out, lambda *a: time.sleep(slow), device="cpu", eval_ppl_tokens=512,
              eval_problems=2, checkpoint_dir=ckpt, checkpoint_every=5)
print(json.dumps({"sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
                  "resumed_from_step": m["resumed_from_step"], "threads": m["threads"]}))
"""


def _train_child(tiny_corpus: Path, out: Path, ckpt: Path | None = None, slow: float = 0.0, **over):
    import os
    import subprocess
    import sys

    cfg = {**TINY, "steps": 20, "threads": 2, **over}
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-c", _TRAIN_CHILD, json.dumps(cfg), str(tiny_corpus), str(out), str(ckpt or ""), str(slow)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_runs(tiny_corpus, tmp_path_factory) -> dict[str, dict]:
    """Three fresh interpreters, one after another (side by side their OpenMP threads would spin
    against each other on a small machine): two with the same config, one with another thread count."""
    d = tmp_path_factory.mktemp("fresh")
    return {"a": _result(_train_child(tiny_corpus, d / "a")), "b": _result(_train_child(tiny_corpus, d / "b")),
            "one_thread": _result(_train_child(tiny_corpus, d / "one", threads=1))}


def test_two_fresh_processes_train_bit_identical_weights(fresh_runs):
    a, b = fresh_runs["a"], fresh_runs["b"]
    assert a["sha256"] == b["sha256"] and a["threads"] == b["threads"] == 2


def test_the_thread_count_is_part_of_the_result_so_the_config_fixes_it(fresh_runs, tiny_corpus):
    """Why ``zoo.threads`` exists: on some CPUs another thread count rounds differently and gives
    other weights (measured on AVX-512 machines; on others the bits agree). So the count comes from
    the config, never the machine: the run reports the count it used, and the zoo step's cache key
    changes with it, so a model trained with 2 threads is never reused as the 1-thread one."""
    from tasks.common.artifacts import cache_key
    from tasks.stun.config import ZooConfig

    assert fresh_runs["one_thread"]["threads"] == 1 and fresh_runs["a"]["threads"] == 2
    keys = {t: cache_key(step="zoo", config=ZooConfig(**{**TINY, "steps": 20, "threads": t}), inputs=[tiny_corpus],
                     code="same code")
            for t in (1, 2)}
    assert keys[1] != keys[2]


def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_weights(fresh_runs, tiny_corpus, tmp_path):
    """SIGKILL after a checkpoint; the rerun resumes from it (batches are a function of the step)
    and ends with exactly the uninterrupted run's weights."""
    import signal
    import time

    ckpt = tmp_path / "ckpt"
    proc = _train_child(tiny_corpus, tmp_path / "c", ckpt, slow=0.1)
    deadline = time.monotonic() + 300
    while not (ckpt / "step_00000010" / "meta.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the child ended"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "c" / "model.safetensors").exists()
    resumed = _result(_train_child(tiny_corpus, tmp_path / "c", ckpt))
    assert 10 <= resumed["resumed_from_step"] < 20
    assert resumed["sha256"] == fresh_runs["a"]["sha256"]


# ---------------------------------------------------------------------------- a user's model is read, not trusted


def test_a_truncated_copy_of_a_trained_model_is_refused_and_a_damaged_one_is_never_reused(tiny_model, tiny_corpus,
                                                                                         tmp_path):
    """Issue 11 probe 3: copy the zoo folder, truncate model.safetensors to half, run stun with
    model=<copy>: refused at validation and at the model step, naming stun.model; a same-size
    corruption passes the header check but changes the content fingerprint, so no step keyed
    on the intact model (calibration, profile, every table) is reused for it."""
    import shutil

    from tasks.common.artifacts import cache_key
    from tasks.common.config import ConfigError, load_config
    from tasks.stun import steps
    from tasks.stun.config import StunConfig

    out, *_ = tiny_model
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cfg = load_config("stun", StunConfig, overrides=[f"model={copy}"])
    key_intact = cache_key(step="calibration", config={}, inputs=[copy], code="same code")

    weights = copy / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ConfigError, match=r"stun\.model: model\.safetensors is truncated"):
        load_config("stun", StunConfig, overrides=[f"model={copy}"])
    with pytest.raises(ConfigError, match=r"stun\.model: model\.safetensors is truncated"):
        steps.prepare_model.fn(cfg, tiny_corpus)  # the folder changed after validation

    flipped = bytearray(intact)
    flipped[-4096:] = bytes(255 - x for x in flipped[-4096:])  # tensor bytes, not the header
    weights.write_bytes(bytes(flipped))
    load_config("stun", StunConfig, overrides=[f"model={copy}"])  # a well-formed file...
    assert cache_key(step="calibration", config={}, inputs=[copy], code="same code") != key_intact  # ...read as new
    weights.write_bytes(intact)
    assert cache_key(step="calibration", config={}, inputs=[copy], code="same code") == key_intact
