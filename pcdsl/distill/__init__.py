"""Latent variable distillation: image data, patches and colour, teachers, latents, counting,
growing and the pipeline that composes them into one circuit (DESIGN.md section 6)."""
