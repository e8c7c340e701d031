"""S3NAS: NPU-aware NAS with a simulated NPU, single-path search and scaling to a latency target."""
