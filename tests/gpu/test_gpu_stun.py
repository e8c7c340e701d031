"""stun on a GPU against its CPU reference: co-activation counts, Wanda/OWL masks of the streaming
pruner, and the streaming pruner's one-layer-resident memory bound on CUDA.

Tolerances (stated here, asserted below):
* profiling in fp32 on both sides: the counts are equal, up to 0.2 % of the counted pairs
  (float-order ties between a token's 2nd and 3rd expert); the flow's GPU actor computes in bf16,
  where ≤ 8 % of the counted pairs may move and the token and forward-pass counts are equal;
* Wanda/OWL streamed on the GPU (bf16 layers, fp32 statistics and scores from the checkpoint's
  fp32 weights) vs the CPU (fp32): every tensor has the same number of zeros (Wanda) or an OWL
  layer sparsity within 0.02; ≥ 98 % of mask entries agree in layer 0 and ≥ 95 % in every layer
  (bf16 rounding reaches the masks only through ‖X_j‖ near each row's threshold, and grows with depth).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

VOCAB = 300


def _mixtral(layers: int, hidden: int, inter: int, experts: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, MixtralConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(MixtralConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 64), num_local_experts=experts,
        num_experts_per_tok=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    with torch.no_grad():  # routers with spread, so the counts are not near-uniform
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("moe") / "src"
    from tasks.stun.tokenizer import train_bpe

    _mixtral(3, 64, 96, 6).save_pretrained(d, max_shard_size="200KB")
    train_bpe(["to be or not to be"] * 20, VOCAB).save_pretrained(d)  # the profiling actor checks the folder whole
    return d


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.randint(3, VOCAB, (16, 32), generator=torch.Generator().manual_seed(1))


def _moved_fraction(a, b) -> float:
    """Fraction of counted pairs that differ between two profiles (over all layers)."""
    diff = sum(float((x - y).abs().sum()) for x, y in zip(a.coactivation, b.coactivation)) / 2
    total = sum(float(x.sum()) for x in a.coactivation) / 2
    return diff / max(total, 1.0)


def test_profiling_counts_on_the_gpu_equal_the_cpu_counts(small_ckpt, calib, gpu):
    from tasks.stun.checkpoint import load_checkpoint
    from tasks.stun.profiling import profile_router

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    batches = [calib[i : i + 8] for i in range(0, len(calib), 8)]
    cpu_model, _ = load_checkpoint(small_ckpt, device="cpu", dtype=torch.float32)
    ref = profile_router(cpu_model, batches)
    gpu_model, _ = load_checkpoint(small_ckpt, device=gpu, dtype=torch.float32)
    assert next(gpu_model.parameters()).device.type == gpu.type
    got = profile_router(gpu_model, [b.to(gpu) for b in batches])
    assert (got.tokens, got.forward_passes) == (ref.tokens, ref.forward_passes) == (calib.numel(), len(batches))
    assert _moved_fraction(got, ref) <= 0.002
    for f_got, f_ref in zip(got.frequency, ref.frequency):
        assert float((f_got - f_ref).abs().sum()) <= 0.004 * float(f_ref.sum())


def test_the_flows_gpu_profiling_actor_runs_in_bf16_and_matches_the_cpu_counts(small_ckpt, calib, gpu, tmp_path):
    """workers/profiler.py with num_gpus=1 (what the flow asks Ray for on a GPU node)."""
    pytest.importorskip("prefect")  # flows.platform.runner (the embedded Ray's settings) needs it
    ray = pytest.importorskip("ray")

    from flows.platform.runner import ray_init_kwargs
    from tasks.common.steps import ResumableStep
    from tasks.stun.checkpoint import load_checkpoint
    from tasks.stun.profiling import profile_router
    from workers.profiler import profile_calibration

    cpu_model, _ = load_checkpoint(small_ckpt, device="cpu", dtype=torch.float32)
    ref = profile_router(cpu_model, [calib[i : i + 8] for i in range(0, len(calib), 8)])
    ray.shutdown()
    ray.init(**{**ray_init_kwargs(None), "num_cpus": 2})
    try:
        num_gpus = 1 if gpu.type == "cuda" else 0
        assert int(ray.cluster_resources().get("GPU", 0)) >= num_gpus, "Ray does not see the GPU"
        shards = ResumableStep(tmp_path / "shards", "k").claim()
        prof, stats = profile_calibration(small_ckpt, calib, shards, workers=1, num_gpus=num_gpus, threads=1)
    finally:
        ray.shutdown()
    assert (prof.tokens, prof.forward_passes) == (ref.tokens, ref.forward_passes)
    assert _moved_fraction(prof, ref) <= 0.08  # bf16 routing on the GPU (fp32 on a CPU dry run: ≈ 0)


def _masks(path: Path) -> dict[str, torch.Tensor]:
    """Zero masks of every prunable tensor of a checkpoint folder, by on-disk key."""
    from safetensors import safe_open

    from tasks.stun.adapters import adapter_for, read_config
    from tasks.stun.streaming import LAYER_PREFIX, is_prunable_disk_key

    ad = adapter_for(read_config(path))
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                if k.startswith(LAYER_PREFIX) and is_prunable_disk_key(ad, k.split(".", 3)[3]):
                    out[k] = h.get_tensor(k) == 0
    return out


@pytest.mark.parametrize("method", ["wanda", "owl"])
def test_streamed_wanda_and_owl_masks_on_the_gpu_agree_with_the_cpu(small_ckpt, calib, gpu, tmp_path, method):
    from tasks.stun.streaming import prune_checkpoint_streaming

    ref = prune_checkpoint_streaming(small_ckpt, tmp_path / "cpu", calib, method=method, sparsity=0.5, device="cpu",
                                     batch_size=8)
    got = prune_checkpoint_streaming(small_ckpt, tmp_path / "gpu", calib, method=method, sparsity=0.5, device=str(gpu),
                                     batch_size=8)
    assert got["device"].startswith(gpu.type)
    if gpu.type == "cuda":
        assert got["compute_dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    for a, b in zip(got["layer_sparsities_asked"], ref["layer_sparsities_asked"]):
        assert abs(a - b) <= (0.02 if method == "owl" else 0.0)
    m_got, m_ref = _masks(tmp_path / "gpu"), _masks(tmp_path / "cpu")
    assert m_got.keys() == m_ref.keys() and m_got
    agree: dict[int, list[float]] = {}
    for k in m_ref:
        if method == "wanda":
            assert int(m_got[k].sum()) == int(m_ref[k].sum()), k
        agree.setdefault(int(k.split(".")[2]), []).append(float((m_got[k] == m_ref[k]).float().mean()))
    assert min(agree[0]) >= 0.98, agree[0]
    assert min(min(v) for v in agree.values()) >= 0.95, agree
    assert abs(got["sparsity_reached"] - ref["sparsity_reached"]) <= 0.01


def test_streaming_on_cuda_keeps_about_one_layer_resident(tmp_path, gpu, needs_real_gpu):
    """peak allocated − baseline ≤ 2 × one layer (bf16) + calibration activations + 16 MiB, on a model
    eight layers deep: the pruner never holds the model on the GPU."""
    from tasks.stun.streaming import prune_checkpoint_streaming

    src = tmp_path / "src"
    model = _mixtral(8, 512, 768, 16)
    layer_params = sum(p.numel() for p in model.model.layers[0].parameters())
    model_params = sum(p.numel() for p in model.model.layers.parameters())
    model.save_pretrained(src, max_shard_size="100MB")
    del model
    ids = torch.randint(3, VOCAB, (8, 128), generator=torch.Generator().manual_seed(2))
    torch.ones(256, 256, device=gpu, dtype=torch.bfloat16) @ torch.ones(256, 256, device=gpu, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated(gpu)  # cuBLAS workspace and earlier tests' leftovers
    rep = prune_checkpoint_streaming(src, tmp_path / "dst", ids, method="owl", sparsity=0.5, device=str(gpu),
                                     batch_size=4)
    elem = 2 if rep["compute_dtype"] == "bfloat16" else 4
    layer_bytes, model_bytes = layer_params * elem, model_params * elem
    bound = 2 * layer_bytes + rep["peak_activation_bytes"] + 16 * 2**20
    peak = rep["peak_device_bytes"] - baseline
    print(f"streaming peak {peak / 2**20:.1f} MiB; one layer {layer_bytes / 2**20:.1f} MiB; "
          f"model {model_bytes / 2**20:.1f} MiB; bound {bound / 2**20:.1f} MiB")
    assert model_bytes > 3 * bound  # the bound is far below holding the model
    assert 0.9 * layer_bytes <= peak <= bound
