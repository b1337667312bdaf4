"""Nemo: a low-write-amplification flash cache for tiny objects, its baselines, devices, traces and server."""
