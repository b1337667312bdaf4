"""Router deltas and GGUF export."""
