"""What scripts/profile-step.py and scripts/profile-threads.py share."""
import subprocess
import time


def startup_delay_ms(cmd):
    """Milliseconds that `cmd` (a short run: construction and the first
    steps) takes, the shorter of two runs: perf starts sampling after that
    long, so only the steady state is sampled. One slow run (a busy host, a
    cold page cache) would otherwise push the start past most of the steps."""
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        runs.append(time.perf_counter() - start)
    return int(1000 * min(runs))
