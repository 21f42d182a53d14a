"""Takes down the Ray processes a sweep's driver started when the driver ends without doing so itself
(SIGKILL, a crash of the interpreter): ``python -m rmask_tune.sweep.reaper DRIVER_PID``.

While the driver lives, the reaper notes every process descended from it (Ray's GCS, raylet, workers) once a
second; when the driver is gone, it SIGKILLs those still running (the same processes: their start times are
compared, so a reused pid is spared) and their children. The process table and the kill come from psutil (no /proc
needed: macOS as Linux). A driver that shuts Ray down itself ends its reaper first (``Reaper.stop``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

POLL_S = 1.0


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, start time) of every process this user may see."""
    found = {}
    for process in psutil.process_iter(["ppid", "create_time"]):
        ppid, started = process.info["ppid"], process.info["create_time"]
        if ppid is not None and started is not None:  # None: gone, or not ours to read
            found[process.pid] = (ppid, started)
    return found


def descendants(root: int, table: dict[int, tuple[int, float]]) -> dict[int, float]:
    """The processes below ``root`` in ``table``, with their start times."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, ()))
    return found


def watch(driver: int) -> None:
    """Note the driver's descendants until it is gone, then kill the ones still running (and their children)."""
    known: dict[int, float] = {}
    while True:
        table = _processes()
        if driver not in table:
            break
        known.update(descendants(driver, table))
        time.sleep(POLL_S)
    table = _processes()
    for pid in list(known):
        known.update(descendants(pid, table))
    for pid, started in known.items():
        if pid != os.getpid() and table.get(pid, (0, None))[1] == started:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


class Reaper:
    """The reaper process of this driver."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rmask_tune.sweep.reaper", str(os.getpid())], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def stop(self) -> None:
        """Ray was shut down by the driver: the reaper has nothing left to do."""
        self.process.kill()
        self.process.wait()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
