"""One progress display for every transfer a command makes (push, pull, export, import).

A :class:`Transfer` is named after what moves (``resnet50:1.3.0``) and shows
each phase as it happens: reading the source, hashing, uploading or
downloading each blob by its role (``weights``, ``graph``, ``file``), then
registering, with bytes, rate and time left, drawn by ``rich`` on stderr. It
is silent when stderr is not a terminal, with ``-q/--quiet`` and with
``MVAULT_NO_PROGRESS=1``. It implements the stores' ``Progress`` protocol
(``start``/``advance``/``finish``; ``advance`` may come from worker threads),
plus :meth:`phase` and :meth:`roles` that the push and load pipelines call
when the display has them.

``rich`` is imported only when a display is actually drawn, so scripts and
pipes pay nothing for it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["Transfer", "progress_enabled"]

#: What a blob's role is called on screen.
_ROLE_NAMES = {"tensors": "weights", "graph": "graph", "file": "file", "program": "program"}


def progress_enabled(quiet: bool = False) -> bool:
    """Whether a command should draw progress: a terminal, not quiet, not MVAULT_NO_PROGRESS."""
    from ..config import settings

    return not quiet and sys.stderr.isatty() and not settings().no_progress


class Transfer:
    """The display of one command's transfers; a no-op when ``enabled`` is False."""

    def __init__(self, title: str, *, verb: str = "uploading", enabled: bool = True) -> None:
        self.title = title
        self.verb = verb
        self.enabled = enabled
        self.bytes_moved = 0
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._roles: dict[str, str] = {}
        self._task: Any = None
        self._phase_task: Any = None
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.text import Text

            class Sized(ProgressColumn):
                """A column shown only for steps with a byte count (not for "registering")."""

                def __init__(self, inner: ProgressColumn) -> None:
                    self.inner = inner
                    super().__init__()

                def render(self, task: Any) -> Any:
                    return self.inner.render(task) if task.total is not None else Text("")

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                Sized(DownloadColumn(binary_units=True)),
                Sized(TransferSpeedColumn()),
                Sized(TimeRemainingColumn()),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()

    # -- what the pipelines call ---------------------------------------------------
    def roles(self, by_digest: Mapping[str, str]) -> None:
        """Name blobs by their role, so a transfer says ``weights``, not a digest."""
        self._roles.update({d: _ROLE_NAMES.get(r, r) for d, r in by_digest.items()})

    def phase(self, name: str, total: int | None = None) -> None:
        """A step of the command (``reading model.pt2``, ``hashing``, ``registering``)."""
        if self._bar is None:
            return
        with self._lock:
            if self._phase_task is not None:
                self._bar.remove_task(self._phase_task)
            self._phase_task = self._bar.add_task(f"{self.title} {name}", total=total)

    # -- the stores' Progress protocol -----------------------------------------------
    def start(self, total: int, label: str) -> None:
        if self._bar is None:
            return
        role = self._roles.get(label)
        what = f"{self.verb} {role}" if role else (label if " " in label else f"{self.verb} blob")
        with self._lock:
            if self._phase_task is not None:
                self._bar.remove_task(self._phase_task)
                self._phase_task = None
            self._task = self._bar.add_task(f"{self.title} {what}", total=total)

    def advance(self, n: int) -> None:
        with self._lock:
            self.bytes_moved += n
            task = self._task if self._task is not None else self._phase_task
            if self._bar is not None and task is not None:
                self._bar.advance(task, n)

    def finish(self) -> None:
        with self._lock:
            if self._bar is not None and self._task is not None:
                self._bar.remove_task(self._task)
                self._task = None

    # -- the end ------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        return time.monotonic() - self._t0

    def close(self) -> None:
        """Stop drawing (idempotent); the screen is left clean for the summary line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
