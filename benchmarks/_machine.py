"""What the benchmarks share: how busy the machine was while they ran.

The machine is small and often shared; a benchmark prints how much CPU time *other*
processes took during its run, so that its figures can be judged.
"""

from __future__ import annotations

import os
import resource


class CpuMonitor:
    """Share of the machine's CPU time used by *other* processes since creation (Linux)."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(busy jiffies of all CPUs, total jiffies, this process's CPU seconds) or None."""
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:9]]  # without guest time
        except (OSError, ValueError):
            return None
        idle = fields[3] + fields[4]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return sum(fields) - idle, sum(fields), usage.ru_utime + usage.ru_stime

    def other_share(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (end[0] - self._start[0]) / hz
        total = (end[1] - self._start[1]) / hz
        mine = end[2] - self._start[2]
        return max(0.0, busy - mine) / max(total, 1e-9)
