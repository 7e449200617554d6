"""What the machine was and what else it was doing, recorded by each benchmark run itself.

A figure without the machine's load next to it cannot be judged: on a shared
machine another job can halve a throughput or double a ratio. Every script
wraps its measurements in :class:`Monitor` and stores ``monitor.record()``
under ``"machine"`` in its results JSON; :func:`describe` turns that record
into the line printed above every table (and rendered into the README).

    with Monitor() as monitor:
        ...  # the measurements
    report["machine"] = monitor.record()
    print(describe(report["machine"]))

Standard library only: the renderers import this module without torch, and
the MLflow side of the registry benchmark runs in another interpreter.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

# A run that starts with more runnable work than this per core shares its
# cores with something else; its figures are marked, not trusted silently.
CONTENDED_LOAD_PER_CPU = 0.5
# Other processes' CPU during the run above this share of one core mark it too.
CONTENDED_OTHERS_PERCENT = 50.0
TOP = 8

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def static_info() -> dict[str, Any]:
    """Hardware and software that do not change during a run."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count() or 1,
        "cpu_model": cpu_model,
        "memory_gib": round(mem / 2**30),
    }


def _read_stat(pid: str) -> tuple[str, int, int, int] | None:
    """(name, parent pid, CPU ticks used, start time in ticks since boot) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # gone between listing and reading
    # The name sits in parentheses and may itself hold spaces or parentheses.
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return name, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19])


def _uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * _CLK_TCK)


class Monitor:
    """Load average at start and end, and every process's CPU use, sampled during a run.

    A sampler thread reads ``/proc/*/stat`` every ``interval`` seconds (a few
    milliseconds of CPU per sample); a process's CPU share is the ticks it used
    between the first and the last time it was seen, over the run's length.
    """

    def __init__(
        self, interval: float = 1.0, top: int = TOP, serving: tuple[str, ...] = ()
    ) -> None:
        self.interval = interval
        self.top = top
        # Servers that are not this process's children but run its work (a
        # PostgreSQL backend answering the benchmark's queries), by process name.
        self.serving = serving
        self._first: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._names: dict[str, str] = {}
        self._parents: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._t0 = self._t1 = 0.0
        self._boot_ticks0 = 0

    def _sample(self) -> None:
        if not Path("/proc").is_dir():
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = _read_stat(entry)
            if stat is None:
                continue
            name, ppid, ticks, started = stat
            if entry not in self._first:
                # A process born during the run used all its ticks in it.
                self._first[entry] = 0 if started >= self._boot_ticks0 else ticks
            self._last[entry] = ticks
            self._names[entry] = name
            self._parents[entry] = ppid

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Monitor:
        self.load_start = os.getloadavg()
        self._boot_ticks0 = _uptime_ticks()
        self._t0 = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="machine-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._t1 = time.monotonic()
        self.load_end = os.getloadavg()

    def _ours(self) -> set[str]:
        """This process and every process it started (an MLflow worker, a SeaweedFS server)."""
        ours = {str(os.getpid())}
        grew = True
        while grew:
            grew = False
            for pid, ppid in self._parents.items():
                if pid not in ours and str(ppid) in ours:
                    ours.add(pid)
                    grew = True
        return ours

    def record(self) -> dict[str, Any]:
        """The JSON-ready record: machine, load, the busiest other processes, contention."""
        info = static_info()
        cpus = int(info["cpus"])
        # Recorded mid-run (a script that saves after each part): up to now.
        end = self._t1 if self._t1 else time.monotonic()
        elapsed = max(end - self._t0, 1e-9)
        ours = self._ours()
        usage = []
        for pid, last in self._last.items():
            pct = (last - self._first[pid]) / _CLK_TCK / elapsed * 100
            if pct >= 0.5:
                usage.append(
                    {
                        "pid": int(pid),
                        "name": self._names[pid],
                        "cpu_percent": round(pct, 1),
                        "this_run": pid in ours or self._names[pid] in self.serving,
                    }
                )
        usage.sort(key=lambda p: -float(p["cpu_percent"]))
        others = [p for p in usage if not p["this_run"]]
        others_pct = round(sum(float(p["cpu_percent"]) for p in others), 1)
        reasons = []
        per_cpu = self.load_start[0] / cpus
        if per_cpu > CONTENDED_LOAD_PER_CPU:
            reasons.append(
                f"load average {self.load_start[0]:.2f} at start on {cpus} CPUs "
                f"(> {CONTENDED_LOAD_PER_CPU} per CPU)"
            )
        if others_pct > CONTENDED_OTHERS_PERCENT:
            reasons.append(f"other processes used {others_pct:.0f}% of a CPU during the run")
        return {
            **info,
            "load_average_start": [round(x, 2) for x in self.load_start],
            "load_average_end": [round(x, 2) for x in self.load_end],
            "sampled_s": round(elapsed, 1),
            "this_run_cpu_percent": round(
                sum(float(p["cpu_percent"]) for p in usage if p["this_run"]), 1
            ),
            "others_cpu_percent": others_pct,
            "top_other_processes": others[: self.top],
            "counted_as_this_run": list(self.serving),
            "contended": bool(reasons),
            "contended_because": reasons,
        }


def describe(machine: Any) -> str:
    """One paragraph for above a table: the machine, its load, and CONTENDED when it was."""
    if not isinstance(machine, dict) or "load_average_start" not in machine:
        return "Machine: not recorded by this run."
    ls, le = machine["load_average_start"], machine["load_average_end"]
    top = ", ".join(
        f"{p['name']} {p['cpu_percent']:.0f}%" for p in machine.get("top_other_processes", [])[:5]
    )
    text = (
        f"Machine: {machine['cpus']} CPUs ({machine.get('cpu_model') or 'unknown model'}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}; "
        f"load average {ls[0]:.2f} at start, "
        + (f"{le[0]:.2f} at end; " if le else "end not recorded; ")
        + (
            f"other processes {machine['others_cpu_percent']:.0f}% of a CPU during the run"
            if machine.get("others_cpu_percent") is not None
            else "other processes' CPU not recorded"
        )
        + (f" ({top})" if top else "")
        + "."
    )
    if machine.get("note"):
        text += f" {machine['note']}"
    extra = machine.get("extra")
    if extra:
        text += " " + "; ".join(f"{k}: {v}" for k, v in extra.items()) + "."
    if machine.get("contended"):
        text = (
            "**CONTENDED RUN** ("
            + "; ".join(machine["contended_because"])
            + "): the figures below are not those of an idle machine. "
            + text
        )
    return text
