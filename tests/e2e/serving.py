"""Running `campaigns serve` (and the CLI) as a user would: subprocesses with a clean env."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any PREFECT_/CAMPAIGNS_ variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CAMPAIGNS_"))}
    env.update(settings)
    return env


def start_serve(env: dict[str, str], port: int, log: Path, timeout: float = 150) -> subprocess.Popen[bytes]:
    """Start `campaigns serve --port PORT` and wait until /healthz answers 200."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"campaigns serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("campaigns serve did not become healthy:\n" + log.read_text())


def cli_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run a `campaigns … --json` command and return its JSON object."""
    r = subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def descendants(root: int) -> list[int]:
    """Every process below `root` (flow-run processes start their own sessions, so a process
    group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and everything below it at once, as a power loss would."""
    import signal

    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_for(fetch: Any, done: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `fetch()` until `done(value)`; the last value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout:.0f} s: {value}")
        time.sleep(every)
