"""Latent variable distillation: image patches, teachers, latent assignments and the LVD pipeline."""
