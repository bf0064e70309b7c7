"""Memory settings of the process that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks instead of returning them to the kernel; True where it applied.

    Each training step allocates and frees activation buffers of several MB. By default glibc serves
    those with fresh mmap()s or trims them back, so every step pays page faults to zero new pages:
    training steps ran about 15% faster with this on the 2-core CPUs measured (bench/). Memory is
    reused, not leaked: the peak stays what the largest step needs.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
