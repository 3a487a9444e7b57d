"""What the benchmarks share: servers in their own processes (so the load
generator in this process does not take their CPU or their GIL), percentiles
and the printing of ratios.

Every server listens on 127.0.0.1 only and is killed when its ``with`` block
ends, whatever happens in it.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tests.harness import adapter_env_vars

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"

# Seconds of load per measured figure; BENCH_SECONDS=1 for a quick look.
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# Peers measured beside the adapter whose packages would clash with ours (python-hl7
# is a top-level ``hl7`` too): installed here by ``make install``, imported only by
# the peer's own process, which runs outside the checkout.
PEERS_DIR = ROOT / ".venv" / "bench-peers"


@contextmanager
def python_server(code: str, port: int, *, peers: bool = False,
                  env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``code`` (which must listen on ``port``) in a fresh interpreter, with
    ``env`` added to its environment; with ``peers``, outside the checkout with
    :data:`PEERS_DIR` importable."""
    env = {**os.environ, **(env or {}), "BENCH_PORT": str(port)}
    if peers:
        env["PYTHONPATH"] = str(PEERS_DIR)
    proc = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(code)],
        cwd=tempfile.gettempdir() if peers else ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {proc.stderr.read().decode(errors='replace')[-2000:] if proc.poll() is not None else ''}") from None
        yield proc
    finally:
        _stop(proc)


@dataclass
class Adapter:
    base_url: str
    mllp_port: int
    token: str
    var_dir: Path
    pid: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def adapter_process(extra_env: dict[str, str] | None = None, wrap: list[str] | None = None) -> Iterator[Adapter]:
    """The real adapter (``python -m adapter serve``) in its own process, on
    SQLite (WAL) in a fresh temporary directory, the sandbox channel. ``wrap``
    prefixes the command (a profiler)."""
    with tempfile.TemporaryDirectory(prefix="adapter-bench-") as tmp:
        var = Path(tmp)
        http_port, mllp_port = free_port(), free_port()
        env = {
            **os.environ,
            **adapter_env_vars(var),
            "ADAPTER_HTTP_HOST": HOST,
            "ADAPTER_MLLP_HOST": HOST,
            **(extra_env or {}),
        }
        cmd = [*(wrap or []), PYTHON, "-m", "adapter", "serve", "--http-port", str(http_port), "--mllp-port", str(mllp_port)]
        log = open(var / "serve.log", "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port(http_port, proc)
                wait_for_port(mllp_port, proc)
            except RuntimeError as exc:
                log.flush()
                raise RuntimeError(f"{exc}\n{(var / 'serve.log').read_text(errors='replace')[-3000:]}") from None
            token = (var / "admin-token").read_text().strip()
            yield Adapter(f"http://{HOST}:{http_port}", mllp_port, token, var, proc.pid)
        finally:
            _stop(proc)
            log.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def unique_tag() -> str:
    return secrets.token_hex(3).upper()


def header(title: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n== {title}  ({stamp}, {os.cpu_count()} cores, {SECONDS:g} s per figure)", flush=True)


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "BELOW" if higher_is_better else "ABOVE"
