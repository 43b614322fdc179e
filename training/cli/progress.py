"""Progress on stderr: a text progress bar (no dependency) and `fit`'s progress callback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressBar:
    """A one-line text progress bar.

    On a terminal it redraws in place (at most 10 times a second); otherwise (logs, CI) it
    prints a line whenever another tenth is done, so logs stay short.
    """

    def __init__(
        self, total: int, label: str = "", *, stream: TextIO | None = None, width: int = 28
    ) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.text = ""
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._closed = False

    def update(self, done: int, text: str = "") -> None:
        self.done = min(max(int(done), 0), self.total)
        self.text = text
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        else:
            tenth = self.done * 10 // self.total
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def advance(self, n: int = 1, text: str = "") -> None:
        self.update(self.done + n, text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tty:
            self.stream.write("\r" + self._line() + "\n")
        elif self._last_tenth != self.done * 10 // self.total:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def _line(self) -> str:
        filled = int(round(self.width * self.done / self.total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < self.done < self.total:
            eta = f" eta {_duration(elapsed / self.done * (self.total - self.done))}"
        label = f"{self.label} " if self.label else ""
        extra = f" {self.text}" if self.text else ""
        return f"{label}[{bar}] {self.done}/{self.total} {_duration(elapsed)}{eta}{extra}".ljust(
            79 if self._tty else 0
        )

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60:d}:{seconds % 60:02d}"
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def fit_progress(
    bar_label: str,
) -> tuple[Callable[[int, int, int, int, float], bool], Callable[[], None]]:
    """An on_progress callback for `fit` drawing one bar over all epochs × steps."""
    state: dict[str, ProgressBar] = {}

    def on_progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = ProgressBar(epochs * steps, bar_label)
        bar.update((epoch - 1) * steps + step, f"epoch {epoch}/{epochs} loss {loss:.4f}")
        return True

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return on_progress, close


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
