"""What else this machine was doing during a measurement: CPU steal from /proc/stat.

On a virtual machine the hypervisor can give this machine's CPU time to other tenants
("steal"); a figure measured while steal was high says more about the neighbours than about
handoff, so benchmarks print the steal share next to their figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cpu_times() -> np.ndarray:
    """This machine's (busy, steal, total) CPU time so far, from /proc/stat (zeros elsewhere)."""
    try:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            float(x) for x in Path("/proc/stat").read_text().split()[1:9]
        )
    except (OSError, ValueError):
        return np.zeros(3)
    busy = user + nice + system + irq + softirq
    return np.array([busy, steal, busy + idle + iowait + steal])


def steal_share(since: np.ndarray) -> float | None:
    """Share of all CPU time since ``cpu_times()`` returned ``since`` that went to others."""
    _, steal, total = cpu_times() - since
    return round(float(steal / total), 3) if total > 0 else None
