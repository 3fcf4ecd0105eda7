"""Progress of a long command, for a person at a terminal and for a batch log alike.

On a terminal it is a tqdm bar. When stderr is not a terminal (Slurm, Kubernetes, ``nohup``,
a CI log) a bar would print nothing useful until the end, so it writes a plain line every
``every`` seconds (``REFINERY_PROGRESS_EVERY``, default 30; 0 turns the lines off) and one
at the end::

    refine: 12/40 shards (30%), 3,400 samples, 410 samples/s, 2 rejected, ETA 1m10s

``update(n)`` counts units of the total (shards, items, iterations); ``set(**fields)`` sets the
other figures a line shows (``samples=``, ``rejected=``, a loss), and a field named ``rate_of``
says which count the rate is of (default: the units themselves).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

EVERY_ENV = "REFINERY_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def say(line: str, stream: IO[str] | None = None) -> None:
    """``line`` (or lines) and a newline to ``stream`` (default stderr) in one write. torchrun
    starts each rank with ``python -u``, where ``print``'s text and newline are two writes to the
    pipe the ranks share, and another rank's line can land between them."""
    stream = stream or sys.stderr
    stream.write(f"{line}\n")
    stream.flush()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _number(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return f"{int(value):,}" if isinstance(value, int | float) else str(value)


class Progress:
    def __init__(
        self,
        total: int,
        *,
        what: str,
        unit: str,
        rate_of: str | None = None,
        every: float | None = None,
        stream: IO[str] | None = None,
        enabled: bool = True,
        clock=time.monotonic,
    ):
        self.total, self.what, self.unit, self.rate_of = total, what, unit, rate_of
        self.stream = stream or sys.stderr
        self.enabled = enabled
        if every is None:
            try:
                every = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY))
            except ValueError:
                every = DEFAULT_EVERY
        self.every = every
        self.clock = clock
        self.began = self.last = clock()
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.bar = None
        if enabled and self._tty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True, file=self.stream)

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._maybe_line()

    def moveto(self, done: int) -> None:
        """Set the count of units done (a trainer reports its iteration)."""
        self.update(done - self.done)

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.set_postfix({k: _number(v) for k, v in fields.items()}, refresh=False)

    def line(self) -> str:
        elapsed = max(self.clock() - self.began, 1e-9)
        percent = f" ({self.done / self.total:.0%})" if self.total else ""
        parts = [f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{percent}"]
        counted = self.fields.get(self.rate_of, self.done) if self.rate_of else self.done
        parts += [
            f"{_number(value)} {name}" for name, value in self.fields.items() if name != "rate"
        ]
        parts.append(f"{counted / elapsed:.3g} {self.rate_of or self.unit}/s")
        if self.done and self.total and self.done < self.total:
            parts.append(f"ETA {_duration(elapsed * (self.total - self.done) / self.done)}")
        elif self.done >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        return ", ".join(parts)

    def _maybe_line(self, *, force: bool = False) -> None:
        if not self.enabled or self.bar is not None or self.every <= 0:
            return
        now = self.clock()
        if force or now - self.last >= self.every:
            self.last = now
            say(self.line(), self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._maybe_line(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
