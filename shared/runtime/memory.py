"""Memory a service process gives back to the system."""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: the size from which a block gets a mapping of its own."""
LARGE = 1 << 20


def return_large_allocations(threshold: int = LARGE) -> bool:
    """Give every block of `threshold` bytes or more a mapping of its own, returned to the
    system when freed; False where the C library is not glibc.

    By default glibc raises that threshold once such a block is freed, and later ones come
    from the allocating thread's arena, which keeps them. Each server thread that once
    hashed a password (Argon2id: 19 MiB) then held 19 MiB for good: twelve concurrent
    sign-ins left the user service 175 MiB larger, and its forty threads could hold 760."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
