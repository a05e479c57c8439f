"""Latent variable distillation: from a deep teacher to a probabilistic circuit (DESIGN.md §6)."""
