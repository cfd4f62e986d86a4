"""handoff policies: diffusion and ACT behind one interface, one trainer, safe checkpoints."""
