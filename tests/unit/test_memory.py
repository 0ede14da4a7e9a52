"""A service gives back what a burst of password hashes took: each Argon2id hash takes
19 MiB in whichever server thread runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

BURST = textwrap.dedent(
    """
    import threading
    from shared.runtime.memory import return_large_allocations
    from services.user.passwords import _hasher

    def rss_mib():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS"))
        return int(line.split()[1]) // 1024

    assert return_large_allocations()
    hasher = _hasher()
    hasher.hash("warm")
    before = rss_mib()
    for _ in range(2):
        threads = [threading.Thread(target=hasher.hash, args=("pw",)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(rss_mib() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, glibc's malloc")
def test_twelve_threads_hashing_at_once_leave_the_process_no_larger() -> None:
    """Without it, glibc kept each thread's 19 MiB: about 230 MiB more after this burst."""
    grown = subprocess.run(
        [sys.executable, "-c", BURST], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert int(grown) < 19, f"the process kept {grown.strip()} MiB after the hashes"
