"""The local stack behind `campaigns serve` and `campaigns demo`: a Prefect server (when
PREFECT_API_URL is unset), a worker and the API, each a child process that dies with us."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from core.settings import Settings


class StackError(RuntimeError):
    """The stack could not start."""


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` if it is free, otherwise any free port."""
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Children get SIGTERM if this process dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG).
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class DataDirLock:
    """An exclusive lock on the data dir: a second serve on it fails clearly."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "serve.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise StackError(
                f"another `campaigns serve` (pid {owner}) is already using data dir "
                f"{self.path.parent.resolve()}; stop it or set CAMPAIGNS_DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Stack:
    """Starts and stops the children; `env` is what every child (and we) should use."""

    def __init__(self, settings: Settings, *, quiet: bool = False) -> None:
        self.settings = settings
        self.quiet = quiet
        self.env = dict(os.environ)
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.prefect_ui: str | None = None
        self.lock = DataDirLock(settings.data_dir)
        self.logs = settings.data_dir / "logs"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        out: Any = None
        if self.quiet:
            out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=_die_with_parent,
        )
        self.children.append((name, proc))
        return proc

    def start_prefect(self) -> None:
        """Start `prefect server start` unless PREFECT_API_URL points at one already."""
        defaults = {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            # A new schedule's first runs are planned within 10 s (Prefect's default is 60).
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
            "PREFECT_LOGGING_LEVEL": "WARNING" if self.quiet else "INFO",
        }
        for key, value in defaults.items():
            self.env.setdefault(key, value)
        if self.env.get("PREFECT_API_URL"):
            self.prefect_ui = self.env["PREFECT_API_URL"].removesuffix("/api")
            return
        home = (self.settings.data_dir / "prefect").resolve()
        home.mkdir(parents=True, exist_ok=True)
        port = free_port(self.settings.prefect_port)
        self.env["PREFECT_HOME"] = str(home)
        self.env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        self.env.setdefault("PREFECT_UI_API_URL", self.env["PREFECT_API_URL"])
        self._spawn(
            "prefect-server",
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        )
        self.prefect_ui = f"http://127.0.0.1:{port}"
        self.wait_http(f"{self.env['PREFECT_API_URL']}/health", "Prefect server", 120)

    def start_worker(self) -> None:
        self._spawn("worker", [sys.executable, "-m", "deployments.cli", "worker"])

    def start_api(self, host: str, port: int) -> None:
        self._spawn(
            "api", [sys.executable, "-m", "deployments.cli", "api", "--host", host, "--port", str(port)]
        )
        self.wait_http(f"http://{host}:{port}/healthz", "API", 60)

    def wait_http(self, url: str, what: str, timeout: float) -> None:
        """Wait until `url` answers 200, or raise if a child died or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise StackError(f"{what} did not answer at {url} within {timeout:.0f} s")

    def check_children(self) -> None:
        """Raise if a child exited."""
        for name, proc in self.children:
            if proc.poll() is not None:
                hint = f" (see {self.logs / (name + '.log')})" if self.quiet else ""
                raise StackError(f"{name} exited with code {proc.returncode}{hint}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every child (newest first, the Prefect server last), then SIGKILL stragglers."""
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                # The child itself first: a runner shuts its flow runs down in order.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
        self.children.clear()
        self.lock.release()
