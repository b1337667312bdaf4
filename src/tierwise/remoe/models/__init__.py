"""Model adapters, the embedded model and its corpus, prompt files and routing traces."""
