"""Process-wide settings that make bulk downloads cheaper, applied when a Downloader is built.

Both change how much work a byte costs, never what is read or written, and
both leave alone a value somebody already chose. Measured with
`benchmarks/download.py` on a 2-vCPU virtual machine (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys

import httpcore

READ_BYTES = 256 << 10  # per socket read of an HTTP/1.1 body (see `read_larger_bodies`)

# glibc's mallopt(3) parameters (malloc.h) and the values we set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 20
_TRIM_THRESHOLD = 32 << 20
# Set by a user (or their platform) on purpose: then glibc's settings are theirs.
_MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def for_downloads() -> None:
    read_larger_bodies()
    keep_buffer_memory()


def read_larger_bodies() -> None:
    """Let httpcore read up to `READ_BYTES` per socket read instead of 64 KiB.

    The asyncio transport already receives up to 256 KiB per `recv`; httpcore
    then asks anyio for 64 KiB at a time, which slices each receive into
    four (copying the rest each time) and runs anyio, h11, httpcore and
    httpx once per slice: per byte, the largest part of a download's CPU
    (reading 256 KiB at a time saves about 0.5 s of CPU per GB on a 2-vCPU
    virtual machine, a third of what reading costs). httpcore has no option;
    `READ_NUM_BYTES` is the class constant its HTTP/1.1 connection reads
    with. It is raised only from its known default (any other value was set
    on purpose and is kept), and it changes how much is read per call, never
    what is read: h11 parses the same bytes the same way. Process-wide, so
    the API client reads its (small) responses the same way. Live downloads
    go through `mvbatch.http11` instead, which takes whatever each receive
    brings; this setting still counts for downloads behind a proxy.
    """
    connection = getattr(httpcore, "AsyncHTTP11Connection", None)
    if connection is not None and getattr(connection, "READ_NUM_BYTES", None) == 64 * 1024:
        connection.READ_NUM_BYTES = READ_BYTES


@functools.cache  # once per process: mallopt is not safe while other threads allocate
def keep_buffer_memory() -> None:
    """On glibc, serve the 256 KiB receive buffers from the heap and keep freed heap memory.

    Every chunk of a body passes through fresh buffers of about 256 KiB (the
    socket receive; through httpcore also h11's buffer and the bytes handed
    on). glibc gives blocks that size their own memory mapping or trims them
    off the heap once freed, so each chunk lands in pages the kernel must map and zero again:
    about one page fault per 4 KiB received (measured: 117,000 faults per GB,
    and on a virtual machine whose host takes freed memory back, each fault
    is dear). With blocks under 1 MiB served from the heap and up to 32 MiB
    of freed heap kept for reuse, the faults all but vanish (about 20 per GB
    in `benchmarks/download.py`) and the client spends some 7% less CPU per GB. The cost is at most
    32 MiB of memory kept for reuse. Skipped when the user set glibc's malloc
    variables themselves, and everywhere but glibc.
    """
    if sys.platform != "linux" or any(name in os.environ for name in _MALLOC_ENVIRONMENT):
        return
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return
    with contextlib.suppress(ValueError, OSError):
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return  # musl and others: no mallopt with these meanings
        # The C library this process already runs on; a static or embedded
        # build may not export mallopt at all.
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        if mallopt is None:
            return
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
