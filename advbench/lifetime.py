"""Forked workers die with the process that forked them.

A ``--workers N`` pool's processes wait on a queue that only the parent feeds: when the parent
is killed (SIGKILL, the out-of-memory killer) nothing tells them, and each stayed alive forever
holding its memory. On Linux the kernel can tell them: ``prctl(PR_SET_PDEATHSIG)`` sends the
worker a signal when its parent dies. Elsewhere a watchdog thread polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
WATCHDOG_SECONDS = 1.0


def die_with_parent(parent: int | None = None) -> str:
    """Arrange for this process to be killed when ``parent`` (default: its parent now) dies;
    returns how ("pdeathsig" or "watchdog"). If the parent is already gone, exit at once."""
    parent = os.getppid() if parent is None else parent
    how = "pdeathsig" if sys.platform.startswith("linux") and _pdeathsig(signal.SIGKILL) else "watchdog"
    if how == "watchdog":
        threading.Thread(target=_watch, args=(parent,), name="advbench-parent-watchdog", daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    return how


def _pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)
