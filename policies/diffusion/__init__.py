"""Diffusion Policy (Chi et al., RSS 2023)."""
