"""Peak host memory of STUN's streaming unstructured pruning (Wanda/OWL skeleton, METHODS.md §1.3).

Builds a randomly initialised Mixtral-style checkpoint (random weights are fine for memory),
saved in several safetensors shards under a temp dir, whose weights are many times the bound
    bound = one decoder layer's bytes + calibration activation bytes [N, T, H] + embedding bytes,
then runs ``prune_checkpoint_streaming`` in a fresh subprocess and measures that process's peak
RSS above its baseline taken right after imports and a tiny warm-up run (so lazy imports, thread
pools and allocator first-touch are not billed to the pruner). The embedding matrix [V, H] is
counted once: it is read once, embeds the calibration tokens and is copied to the output shard in
that same read, then freed before the first layer is loaded. Prints a table and writes
``bench/results/stun_memory.json``.

Run:  .venv/bin/python bench/stun_memory.py [--layers 16 --experts 8 --hidden 256 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=16, help="decoder layers")
    p.add_argument("--experts", type=int, default=8, help="routed experts per layer")
    p.add_argument("--hidden", type=int, default=384, help="hidden size H")
    p.add_argument("--intermediate", type=int, default=768, help="expert intermediate size I")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size V")
    p.add_argument("--calib-n", type=int, default=16, help="calibration sequences N")
    p.add_argument("--calib-t", type=int, default=128, help="calibration sequence length T")
    # Per-call working memory (attention, MoE intermediates ∝ B·T·k·I) is not in the bound; a
    # small batch keeps it well under one layer, as with real models (I·H ≫ B·T).
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--method", default="wanda", choices=["wanda", "owl", "magnitude"])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--shard-mb", type=int, default=64, help="max shard size of the source checkpoint")
    # 1: on a shared 2-core box torch's intra-op threads contend (CPU index_add_ ran 1000× slower
    # with 2 threads under load); memory does not depend on it.
    p.add_argument("--threads", type=int, default=1, help="torch threads in the pruning process")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stun_memory.json")
    p.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def mixtral_config(a: argparse.Namespace, *, layers: int | None = None, hidden: int | None = None,
                   inter: int | None = None, experts: int | None = None, vocab: int | None = None):
    from transformers import MixtralConfig

    h = hidden or a.hidden
    return MixtralConfig(vocab_size=vocab or a.vocab, hidden_size=h, intermediate_size=inter or a.intermediate,
                         num_hidden_layers=layers or a.layers, num_attention_heads=max(1, h // 64),
                         num_key_value_heads=max(1, h // 128), num_local_experts=experts or a.experts,
                         num_experts_per_tok=2, max_position_embeddings=max(4096, a.calib_t),
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


def build_checkpoint(config, path: Path, shard_mb: int, seed: int = 0) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, max_shard_size=f"{shard_mb}MB")
    del model


def checkpoint_sizes(path: Path) -> dict[str, int]:
    """Bytes of the whole model, of each decoder layer and of the embedding, from shard headers."""
    from safetensors import safe_open

    from tasks.stun.adapters import ShardReader

    reader = ShardReader(path)
    sizes: dict[str, int] = {"model": 0, "embed": 0}
    layers: dict[int, int] = {}
    for fname in sorted(set(reader.weight_map.values())):
        with safe_open(path / fname, "pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                n = 1
                for d in sl.get_shape():
                    n *= d
                nbytes = n * {"F32": 4, "BF16": 2, "F16": 2}[sl.get_dtype()]
                sizes["model"] += nbytes
                if k == "model.embed_tokens.weight":
                    sizes["embed"] = nbytes
                if k.startswith("model.layers."):
                    i = int(k.split(".")[2])
                    layers[i] = layers.get(i, 0) + nbytes
    sizes["layer"] = max(layers.values())
    sizes["shards"] = len(set(reader.weight_map.values()))
    return sizes


# ---------------------------------------------------------------------------------- the measured process


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm() -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def child(spec: dict) -> None:
    """Runs in a fresh interpreter: warm up, take the baseline, prune, report peak RSS."""
    import gc

    import psutil
    import torch

    from tasks.stun.streaming import prune_checkpoint_streaming

    torch.set_num_threads(spec["threads"])
    proc = psutil.Process()
    g = torch.Generator().manual_seed(0)
    # warm-up on a tiny checkpoint of the same family: imports, kernels, thread pools
    warm_ids = torch.randint(3, spec["warm_vocab"], (2, 16), generator=g)
    prune_checkpoint_streaming(spec["warm_src"], Path(spec["tmp"]) / "warm_out", warm_ids,
                               method=spec["method"], sparsity=spec["sparsity"], batch_size=2)
    ids = torch.randint(3, spec["vocab"], (spec["calib_n"], spec["calib_t"]), generator=g)  # [N, T]
    gc.collect()
    baseline = proc.memory_info().rss
    hwm_reset = reset_peak_rss()  # VmHWM := current RSS (Linux ≥ 4.0), else rely on sampling
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    report = prune_checkpoint_streaming(spec["src"], spec["dst"], ids, method=spec["method"],
                                        sparsity=spec["sparsity"], batch_size=spec["batch_size"])
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    # ru_maxrss is useless here: Linux carries the parent's high-water mark across fork+exec.
    hwm = vm_hwm() if hwm_reset else None
    print(json.dumps({
        "baseline_rss": baseline, "peak_rss_sampled": peak[0], "peak_rss_hwm": hwm,
        "wall_s": wall, "sparsity_reached": report["sparsity_reached"],
        "forward_passes": report["forward_passes"], "activation_bytes": report["peak_activation_bytes"],
    }))


# ---------------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.child is not None:
        child(json.loads(a.child))
        return {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stun_memory_") as tmp:
        tmp_p = Path(tmp)
        src, warm = tmp_p / "src", tmp_p / "warm"
        t0 = time.perf_counter()
        build_checkpoint(mixtral_config(a), src, a.shard_mb)
        build_checkpoint(mixtral_config(a, layers=1, hidden=64, inter=64, experts=4, vocab=128), warm, a.shard_mb)
        build_s = time.perf_counter() - t0
        sizes = checkpoint_sizes(src)
        act_bytes = a.calib_n * a.calib_t * a.hidden * 4  # [N, T, H] float32 on CPU
        bound = sizes["layer"] + act_bytes + sizes["embed"]
        spec = {"src": str(src), "dst": str(tmp_p / "dst"), "warm_src": str(warm), "warm_vocab": 128,
                "tmp": tmp, "vocab": a.vocab, "calib_n": a.calib_n, "calib_t": a.calib_t,
                "batch_size": a.batch_size, "method": a.method, "sparsity": a.sparsity, "threads": a.threads}
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"pruning subprocess failed with code {out.returncode}")
        res = json.loads(out.stdout.strip().splitlines()[-1])

    peak_rss = max(res["peak_rss_sampled"], res["peak_rss_hwm"] or 0)
    peak_above = peak_rss - res["baseline_rss"]
    result = {
        "config": {k: v for k, v in vars(a).items() if k not in ("child", "out")},
        "model_bytes": sizes["model"], "shards": sizes["shards"], "layer_bytes": sizes["layer"],
        "activation_bytes": act_bytes, "embedding_bytes": sizes["embed"], "bound_bytes": bound,
        "baseline_rss_bytes": res["baseline_rss"],
        "peak_above_baseline_bytes": peak_above,
        "peak_above_baseline_sampled_bytes": res["peak_rss_sampled"] - res["baseline_rss"],
        "peak_source": "VmHWM after clear_refs reset, max with 1 ms psutil sampling"
                       if res["peak_rss_hwm"] else "1 ms psutil sampling",
        "ratio_peak_to_bound": peak_above / bound,
        "ratio_model_to_bound": sizes["model"] / bound,
        "ratio_peak_to_model": peak_above / sizes["model"],
        "prune_wall_s": res["wall_s"], "build_s": build_s, "total_s": time.perf_counter() - t_start,
        "sparsity_reached": res["sparsity_reached"], "forward_passes": res["forward_passes"],
        "bound_note": "bound = max decoder-layer bytes + N·T·H·4 activation bytes + embedding bytes "
                      "(embedding read once, freed before layer 0 is loaded)",
    }
    shape = f"{sizes['shards']} shards, {a.layers} layers × {a.experts} experts"
    rows = [("model bytes", f"{sizes['model'] / MiB:9.1f} MiB ({shape})"),
            ("layer bytes", f"{sizes['layer'] / MiB:9.1f} MiB"),
            ("activation bytes", f"{act_bytes / MiB:9.1f} MiB  (N={a.calib_n}, T={a.calib_t}, H={a.hidden}, fp32)"),
            ("embedding bytes", f"{sizes['embed'] / MiB:9.1f} MiB"),
            ("bound", f"{bound / MiB:9.1f} MiB  (layer + activations + embedding)"),
            ("peak RSS above baseline", f"{peak_above / MiB:9.1f} MiB  (baseline {res['baseline_rss'] / MiB:.0f} MiB)"),
            ("ratio peak / bound", f"{result['ratio_peak_to_bound']:9.2f}"),
            ("ratio model / bound", f"{result['ratio_model_to_bound']:9.2f}"),
            ("prune wall time", f"{res['wall_s']:9.1f} s  ({a.method}, {res['forward_passes']} layer evaluations)")]
    w = max(len(r[0]) for r in rows)
    print(f"STUN streaming pruning, peak host memory ({a.method}, sparsity {a.sparsity})")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
