"""Is a process still the one we started? Liveness of a local process, safe against PID reuse.

A PID names a process only while it lives: once it exits, the kernel may hand the number to a new
process. So "alive" here means: a process with that PID exists, is not a zombie (exited, waiting to be
reaped), and started no later than the moment we know our process was already running (`running_at`,
a Unix time). Where /proc is missing (macOS), only existence is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
# /proc/stat's boot time has whole seconds and a start time clock ticks: allow for both roundings.
START_TIME_SLACK_S = 1.5


def process_alive(pid: int, running_at: float, proc: Path = PROC) -> bool:
    """True when process `pid` exists, is not a zombie, and is the process that ran at `running_at`."""
    if pid <= 0:
        return False
    stat = _read(proc / str(pid) / "stat")
    if stat is None:
        if proc.is_dir():  # a Linux system without that process
            return False
        return _exists(pid)
    state, start_ticks = _state_and_start(stat)
    if state in ("Z", "X"):
        return False
    boot_time = _boot_time(proc)
    if boot_time is None or start_ticks is None:
        return True
    started_at = boot_time + start_ticks / os.sysconf("SC_CLK_TCK")
    return started_at <= running_at + START_TIME_SLACK_S


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _state_and_start(stat: str) -> tuple[str, int | None]:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat (see proc(5)).

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses, so the
    fields are counted after its last ')': state is field 3, start time field 22.
    """
    fields = stat[stat.rfind(")") + 1 :].split()
    state = fields[0] if fields else "?"
    try:
        return state, int(fields[19])
    except (IndexError, ValueError):
        return state, None


def _boot_time(proc: Path) -> float | None:
    text = _read(proc / "stat")
    for line in (text or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: it exists
        return True
    return True
