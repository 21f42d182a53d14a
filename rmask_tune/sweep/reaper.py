"""Takes down the Ray processes a sweep's driver started when the driver ends without doing so itself
(SIGKILL, a crash of the interpreter): ``python -m rmask_tune.sweep.reaper DRIVER_PID``.

While the driver lives, the reaper notes every process descended from it (Ray's GCS, raylet, workers) once a
second; when the driver is gone, it SIGKILLs those still running (the same processes: their start times are
compared, so a reused pid is spared) and their children. Linux only (it reads /proc); elsewhere nothing runs.
A driver that shuts Ray down itself ends its reaper first (``Reaper.stop``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process /proc shows."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return found


def descendants(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
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
    known: dict[int, str] = {}
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
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class Reaper:
    """The reaper process of this driver (none where /proc is missing)."""

    def __init__(self):
        self.process = None
        if Path("/proc/self/stat").is_file():
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rmask_tune.sweep.reaper", str(os.getpid())], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )

    def stop(self) -> None:
        """Ray was shut down by the driver: the reaper has nothing left to do."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
