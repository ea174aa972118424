"""CPU time and resident memory of server processes, read from /proc (Linux only).

The benchmark samples a server and its worker children before and after a load run; the difference in
utime+stime divided by the requests served is the server-side CPU cost of one request.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name sits in parentheses and may hold spaces or parentheses: split after the last one.
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running (not exited and waiting to be reaped)."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of one live process, in seconds; 0 if it is gone."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    # Fields 14 and 15 of proc(5); the list starts at field 3 (state).
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(parent: int) -> list[int]:
    """Direct children of ``parent`` (modelhost starts workers in their own session, still as children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == parent:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def process_tree(leader: int) -> list[int]:
    """``leader``, every process of its session and all their descendants: a peer server with its sidecars.

    Servers start in their own session, so the session catches daemons that were re-parented to init; the
    descendants catch children that started sessions of their own (modelhost's workers).
    """
    parents: dict[int, int] = {}
    found = {leader}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue
        if fields[0] in ("Z", "X"):  # exited, waiting to be reaped: no CPU or memory to count
            continue
        parents[int(entry.name)] = int(fields[1])
        if int(fields[3]) == leader:
            found.add(int(entry.name))
    grew = True
    while grew:
        added = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        found |= added
        grew = bool(added)
    return sorted(pid for pid in found if pid in parents)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def cpu_by_role(roles: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """CPU seconds per role (e.g. ``{"server": [pid], "workers": [pid, pid]}``), summed over its pids."""
    return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def total_rss_bytes(pids: Iterable[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), to tell how much else ran meanwhile."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS_PER_S
