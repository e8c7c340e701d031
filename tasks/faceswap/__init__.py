"""The faceswap flow: SAMAE vs baselines on rendered faces with ground-truth swaps."""
