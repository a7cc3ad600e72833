"""Keep a CPU load's peak memory to what it really needs.

glibc's malloc raises its mmap threshold each time a large block is freed, so after the first few tensors, freed
full-precision temporaries (each weight read, cast and quantized while loading a 4-bit model) stay in the heap
instead of going back to the system, and the process's resident memory climbs towards the whole model in full
precision although at most a few matrices are alive at a time (measured on a 304M GPT-J: 522 MiB of anonymous
memory for a 153 MiB NF4 model; 199 MiB with this). While loading, blocks of 64 KiB and more are mapped and
unmapped directly; afterwards the threshold is fixed at glibc's own maximum, where the dynamic one would end anyway
(or at MALLOC_MMAP_THRESHOLD_ when the environment sets it).
No effect off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
DURING = 64 * 1024
AFTER = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", 32 * 1024 * 1024))  # a user's own setting is kept


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def freed_memory_returned():
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, DURING)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, AFTER)
            libc.malloc_trim(0)
