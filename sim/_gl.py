"""Pick the off-screen OpenGL back-end before MuJoCo is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import. Order of precedence: ``HANDOFF_GL`` (handoff's own
override), then a ``MUJOCO_GL`` the user already set, then EGL when an NVIDIA or DRM render
device is present, else OSMesa (software, works on every CPU machine with ``libosmesa6``).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings
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


# A renderer on an empty model: what a camera needs (GL context + MuJoCo's GL function loading).
_PROBE = "import mujoco; mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8).close()"


def _opens_here(backend: str) -> bool:
    """Whether ``backend`` opens a context on this machine (a fresh process: MuJoCo binds its
    back-end once, at import)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HANDOFF_GL", "PYOPENGL_PLATFORM")}
    env["MUJOCO_GL"] = backend
    if backend in ("osmesa", "egl"):
        env["PYOPENGL_PLATFORM"] = backend
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def require_gl() -> None:
    """Refuse, as one line naming the back-ends that work here, a GL back-end that cannot
    render. Call it before writing anything: a camera's renderer otherwise fails with a
    traceback on its first frame (e.g. ``MUJOCO_GL=glfw`` with no display)."""
    configure_gl()
    import mujoco

    failure = None
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None  # a half-built Renderer complains from __del__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # glfw warns about a missing display, then fails
            mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 8, 8).close()
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
    finally:
        gc.collect()
        sys.unraisablehook = hook
    if failure is None:
        return
    from data.errors import UserError

    current = os.environ.get("MUJOCO_GL", "?")
    working = [b for b in BACKENDS if b != current and _opens_here(b)]
    fix = (
        f"back-ends that work here: {', '.join(working)}; set MUJOCO_GL={working[0]}"
        if working
        else "no back-end works here; install libosmesa6 (software rendering) or drop the cameras"
    )
    raise UserError(f"MUJOCO_GL={current} cannot render on this machine ({failure}); {fix}")
