"""The offloading runtime: an on-disk expert store, per-layer expert caches, timed greedy decoding."""
