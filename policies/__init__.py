"""handoff policies: diffusion and ACT behind one interface, one trainer, safe checkpoints.

``policies.load(path)`` returns a policy ready for ``select_action`` (registered as the
``load_policy`` hook, which sim/evaluate.py and the ROS policy node use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(path: str | Path, device: str = "cpu") -> Any:
    """Load a checkpoint directory, or a run directory's best checkpoint."""
    from policies.checkpoint import load_policy

    return load_policy(path, device=device)


__all__ = ["load"]
