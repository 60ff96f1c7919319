"""Pieces shared by the worker and client benchmarks: process figures, worker processes,
percentiles, machine load and Markdown tables.

CPU and memory of another process come from ``/proc`` (Linux): ``utime + stime`` of
``/proc/<pid>/stat`` (every thread of the process) and ``VmRSS`` / ``VmHWM`` of
``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


# -- figures of a process ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds used so far (user + system, all threads) and memory, of one process."""

    cpu: float
    rss: int
    hwm: int


def proc_sample(pid: int) -> ProcSample:
    """Read a process's CPU time and resident memory (current and peak) from ``/proc``."""
    fields = _stat_fields(pid)
    # Fields after the command name start at field 3 (state); utime and stime are 14 and 15.
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return ProcSample(cpu, rss, hwm)


class ServerCpu:
    """CPU seconds used by a local PostgreSQL server: the postmaster, its live children
    (backends and background processes) and the children it has already reaped.

    Only meaningful when the server runs on this machine and serves nothing else meanwhile,
    as the throwaway server the benchmarks start does.
    """

    def __init__(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select pg_backend_pid()").fetchone()
            assert row is not None
            # Read while connected: the backend exits, and leaves /proc, once the connection closes.
            self.postmaster = int(_stat_fields(int(row[0]))[1])

    def sample(self) -> float:
        own = _stat_fields(self.postmaster)
        # utime, stime, cutime, cstime: fields 14-17 of /proc/<pid>/stat
        total = sum(int(v) for v in own[11:15])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = _stat_fields(int(entry.name))
            except (OSError, ValueError):
                continue  # gone meanwhile
            if fields[1] == str(self.postmaster):
                total += int(fields[11]) + int(fields[12])
        return total / _TICKS


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- machine load ------------------------------------------------------------------------------


@dataclass
class LoadLog:
    """The 1-minute load average, noted at the start and at chosen moments of a benchmark.

    The machine has few cores and other processes may run; the figures are only comparable
    with the load they were measured under, so every report carries it.
    """

    samples: list[float] = field(default_factory=list)

    def note(self) -> float:
        load = os.getloadavg()[0]
        self.samples.append(load)
        return load

    def summary(self) -> str:
        if not self.samples:
            return "load not sampled"
        first = self.samples[0]
        low, high = min(self.samples), max(self.samples)
        return (
            f"1-min load average {first:.2f} at the start, {low:.2f}-{high:.2f} over the run "
            f"({os.cpu_count()} cores; the benchmark's own processes count too)"
        )


def describe_machine(dsn: str) -> str:
    """Python, PostgreSQL and core count, for the report's header."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("show server_version").fetchone()
        fsync = conn.execute("show fsync").fetchone()
    server = row[0] if row else "?"
    durability = "fsync off" if fsync and fsync[0] == "off" else "fsync on"
    return (
        f"Python {platform.python_version()}, PostgreSQL {server} ({durability}), "
        f"{os.cpu_count()} cores"
    )


# -- Markdown ----------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first column is left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- a worker process -------------------------------------------------------------------------


class WorkerProcess:
    """``python -m pgflow_worker worker TARGET --db DSN`` as a child process.

    Its log goes to a scratch file, shown when it fails. :meth:`wait_registered` returns once
    the worker has defined its flow and registered in ``pgflow.workers``.
    """

    def __init__(
        self, target: str, dsn: str, *options: str, python_options: Sequence[str] = ()
    ) -> None:
        self.target = target
        self.dsn = dsn
        self.options = options
        self.python_options = list(python_options)
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the worker process is not started")
        return self._proc.pid

    def start(self) -> WorkerProcess:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        command = [sys.executable, *self.python_options, "-m", "pgflow_worker", "worker"]
        self._proc = subprocess.Popen(
            [*command, self.target, "--db", self.dsn, *self.options],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def sample(self) -> ProcSample:
        return proc_sample(self.pid)

    def wait_registered(
        self,
        conn: psycopg.Connection[Any],
        queue: str,
        timeout: float,
        count: int = 1,
        excluding: uuid.UUID | None = None,
    ) -> None:
        """Wait until ``count`` live workers of ``queue`` are registered, not counting the row
        ``excluding`` names; fail if this process exits."""
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute(
                "select count(*) from pgflow.workers where queue_name = %s and stopped_at is null"
                " and worker_id is distinct from %s",
                (queue, excluding),
            ).fetchone()
            if row and row[0] >= count:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker for {queue!r} did not register within {timeout} s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise RuntimeError(f"the worker exited with code {code}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self._proc is None:
            return 0
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, limit: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
