"""Starts a bring-your-own server so that it dies with modelhost, even when modelhost is killed by SIGKILL.

``python -m modelhost.instances.parent_death PARENT_PID PROGRAM [ARGS...]`` asks the kernel to SIGKILL this
process when its parent dies, then execs the program, which keeps that request. Our own workers watch a
lifeline pipe instead; a foreign program does not know to. Started only by the local backend.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    parent, program = int(argv[0]), argv[1:]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stale-pid sweep on restart still cleans up
        pass
    if os.getppid() != parent:
        return 1  # modelhost died before the request was made, so nothing would ever stop the program
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        # Lands in the instance's log, which the endpoint's FailureReason quotes.
        print(f"modelhost: cannot run the server program {program[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
