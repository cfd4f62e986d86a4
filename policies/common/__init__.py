"""Pieces every policy shares: config base, normaliser, vision backbone, observation encoder."""
