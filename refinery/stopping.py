"""SIGINT and SIGTERM as requests to stop at a safe point, not as exceptions anywhere.

Schedulers (Slurm, Kubernetes) send SIGTERM before they kill a job, and a user presses Ctrl-C:
a training loop finishes its iteration and checkpoints, a refine job drops the shard it is
writing at its next batch, both return. Python would otherwise raise ``KeyboardInterrupt``
wherever the main thread happens to be (between creating a temporary file and remembering
it, say). A second signal interrupts at once.

    with stop_requests() as stop:
        while work:
            if stop["signal"]:  # 0, or the number of the signal received
                break
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, int]]:
    """Record SIGINT / SIGTERM in ``["signal"]`` while the block runs (main thread only; in
    another thread signals keep their handlers and the dict stays 0)."""
    requested = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested["signal"]:
            raise KeyboardInterrupt
        requested["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
