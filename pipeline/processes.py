"""Process hygiene for long jobs: a child that dies with its parent, a folder only one process writes."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import InputError

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (kill -9 included).

    With `parent_pid`, exit at once if the parent already died before the request took effect.
    Elsewhere than Linux this does nothing: the caller's own cleanup is all there is.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None or not hasattr(os, "getppid"):
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def child_dies_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the started program dies with the process starting it."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)


@contextlib.contextmanager
def exclusive_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder/.lock` for the block; another process holding it gets a clear InputError at once.

    The lock is an flock: the kernel releases it when its holder exits, however it exits.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(folder, f"{what} is already running here ({holder}); wait for it to finish or stop it, "
                                     "then run again (it resumes)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
