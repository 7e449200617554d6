"""Run ``mvault`` on a real pseudo-terminal and read the screen as a person would."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class Screen:
    code: int
    raw: str
    #: seconds from start to the first byte on the terminal
    first_output: float | None
    #: seconds from the interrupt (if any) to exit
    after_interrupt: float | None

    @property
    def text(self) -> str:
        """What the terminal showed, escape codes removed, each redraw on its own line."""
        return _ANSI.sub("", self.raw.replace("\r", "\n"))


def run_on_pty(
    args: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    interrupt_when: Callable[[str], bool] | None = None,
    answer: tuple[str, str] | None = None,
    timeout: float = 120,
) -> Screen:
    """Run ``mvault ARGS`` with stdin/stdout/stderr on a pty; optionally send SIGINT
    once ``interrupt_when(screen_text_so_far)`` is true, or type ``answer[1]`` once the
    screen shows ``answer[0]`` (a question)."""
    master, slave = pty.openpty()
    full_env = {**os.environ, **env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelvault.cli.main", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=full_env,
        close_fds=True,
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    t0 = time.monotonic()
    first = interrupted_at = None
    try:
        while True:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                raise TimeoutError(f"mvault {' '.join(args)} ran past {timeout} s")
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    data = b""
                if data:
                    first = first if first is not None else time.monotonic() - t0
                    out += data
                elif proc.poll() is not None:
                    break
            elif proc.poll() is not None:
                break
            if answer is not None and answer[0] in _ANSI.sub("", out.decode(errors="replace")):
                os.write(master, answer[1].encode())
                answer = None
            if (
                interrupt_when is not None
                and interrupted_at is None
                and interrupt_when(_ANSI.sub("", out.decode(errors="replace")))
            ):
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
                interrupted_at = time.monotonic()
    finally:
        os.close(master)
    code = proc.wait()
    after = None if interrupted_at is None else time.monotonic() - interrupted_at
    return Screen(code, out.decode(errors="replace"), first, after)
