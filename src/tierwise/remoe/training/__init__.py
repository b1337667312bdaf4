"""Router fine-tuning (objective and loop) and pretraining of the embedded model."""
