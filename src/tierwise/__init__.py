"""tierwise: caches at the memory/flash boundary (ReMoE and Nemo)."""

__version__ = "0.1.0"
