"""``sim``: the simulated twin of a camera, a MuJoCo render of a sim task's scene.

``source`` names the camera as ``[task/]camera`` (``agentview``, ``can/wrist``; the task
defaults to ``lift``). The scene is reset with seed 0 and held still: the frames show what a
fixed camera would, for tests and demos without a device. (The sim_arm node renders its own
cameras from the physics it steps; this source is for the camera node.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from handoff_ros.camera_sources.base import GrabThread, register_camera_source

if TYPE_CHECKING:
    from handoff_ros.camera import CameraParams

DEFAULT_TASK = "lift"


@register_camera_source("sim")
class SimCamera(GrabThread):
    """Renders ``camera`` of ``task`` at (height, width), paced at ``fps`` (software GL needs
    ~45 ms for an 84x84 frame on a CPU: a higher ``fps`` is not reached)."""

    def __init__(
        self,
        camera: str,
        task: str = DEFAULT_TASK,
        width: int = 84,
        height: int = 84,
        fps: float = 10.0,
        clock: Callable[[], float] = time.time,
        reconnect_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        from sim._gl import require_gl
        from sim.mujoco_arm import CAMERAS
        from sim.tasks import get_task

        if camera not in CAMERAS:
            raise ValueError(f"simulated camera {camera!r}: use one of {sorted(CAMERAS)}")
        get_task(task)  # an unknown task: the registry's error lists the tasks
        require_gl()  # a GL back-end that cannot render: one line now, not a thread traceback
        super().__init__(f"{task}/{camera}", width, height, fps, clock, reconnect_s, paced=True)
        self.camera, self.task, self.seed = camera, task, seed
        self._arm = None

    @classmethod
    def from_params(cls, p: CameraParams, clock: Callable[[], float]) -> SimCamera:
        task, _, camera = p.source.rpartition("/")
        return cls(camera, task or DEFAULT_TASK, p.width, p.height, p.fps, clock, p.reconnect_s)

    def _open(self) -> bool:
        from sim.mujoco_arm import SimArm

        try:
            self._arm = SimArm(self.task)
            self._arm.reset(self.seed)
        except Exception as e:  # reported on /diagnostics like a missing device
            self.error = f"simulated camera {self.label!r}: {type(e).__name__}: {e}"
            return False
        return True

    def _grab(self) -> np.ndarray | None:
        return self._arm.render(self.camera, (self.height, self.width))

    def _release(self) -> None:
        if self._arm is not None:
            self._arm.close()
            self._arm = None
