"""A child process's peak anonymous resident memory (RssAnon: what it holds that is not a file's page
cache), sampled from /proc every 20 ms: the figure bench.storage reports and tests/test_storage.py bounds."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def run_with_peak_anon(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run ``command`` (stdout and stderr captured apart); the process, its seconds and its peak RssAnon in bytes."""
    start = time.perf_counter()
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=preexec_fn
    )
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak[0] = max(peak[0], int(status.split("RssAnon:")[1].split()[0]) * 1024)
            except (OSError, IndexError):  # the process ended between poll and read
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate(timeout=timeout)
    sampler.join()
    done = subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr)
    return done, time.perf_counter() - start, peak[0]
