"""Shared building blocks of every paperline domain: artifact IO, configs, devices, registries."""
