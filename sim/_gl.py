"""Pick the off-screen OpenGL back-end before MuJoCo is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import. Order of precedence: ``HANDOFF_GL`` (handoff's own
override), then a ``MUJOCO_GL`` the user already set, then EGL when an NVIDIA or DRM render
device is present, else OSMesa (software, works on every CPU machine with ``libosmesa6``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BACKENDS = ("osmesa", "egl", "glfw")


def _gpu_present() -> bool:
    return Path("/dev/nvidia0").exists() or any(Path("/dev/dri").glob("renderD*"))


def configure_gl() -> str:
    """Set ``MUJOCO_GL``/``PYOPENGL_PLATFORM`` (if MuJoCo is not imported yet); return it."""
    chosen = os.environ.get("HANDOFF_GL") or os.environ.get("MUJOCO_GL")
    if not chosen:
        chosen = "egl" if _gpu_present() else "osmesa"
    if chosen not in BACKENDS:
        from data.errors import UserError

        raise UserError(f"HANDOFF_GL/MUJOCO_GL={chosen!r} is not one of {BACKENDS}")
    if "mujoco" in sys.modules:
        # too late to change: MuJoCo already bound a back-end; report the one it uses
        return os.environ.get("MUJOCO_GL", chosen)
    os.environ["MUJOCO_GL"] = chosen
    # PyOpenGL (used by mujoco's GL contexts) must agree; glfw uses the default platform
    if chosen in ("osmesa", "egl"):
        os.environ["PYOPENGL_PLATFORM"] = chosen
    return chosen
