"""ReMoE: routing analysis, router fine-tuning for expert reuse, and expert offloading for MoE LLMs."""
