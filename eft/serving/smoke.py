"""A running-server smoke check: start `eft serve` on a free loopback port, get one embedding through the
real OpenAI client, stop the server, and say how it went in one line."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_dir: Path | str, port: int, extra_args: Sequence[str] = (), log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """`python -m eft.serving.cli` in a subprocess on 127.0.0.1:port; its output goes to a log file."""
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="eft-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    cmd = [sys.executable, "-m", "eft.serving.cli", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *extra_args]
    e = dict(os.environ)
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e.update(env or {})
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=e)
    return proc, log_path


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> dict:
    """Poll /health/ready until 200; raise RuntimeError if the process dies or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2.0)
            if r.status_code == 200:
                return r.json()
            last = r.json().get("status", r.text)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f}s ({last})")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def smoke_check(model_dir: Path | str, extra_args: Sequence[str] = (), timeout: float = 180.0) -> str:
    """Start, one embedding via the `openai` client, stop. Never raises: failures come back as the line."""
    import logging

    # Imported first: its import sets the levels $OPENAI_LOG asks for, which the lines below override.
    import openai  # noqa: F401

    # The OpenAI client's HTTP library logs every request at INFO: not news in a one-line check.
    quiet = [logging.getLogger(n) for n in ("httpx", "httpx2", "httpcore", "openai")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        return _smoke_check(model_dir, extra_args, timeout)
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)


def _smoke_check(model_dir: Path | str, extra_args: Sequence[str], timeout: float) -> str:
    import openai

    port = free_port()
    t_start = time.perf_counter()
    proc, log_path = start_server(model_dir, port, extra_args)
    try:
        try:
            info = wait_ready(port, proc, timeout)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="eft-smoke-check",
                                   max_retries=0, timeout=60.0)
            name = client.models.list().data[0].id
            t0 = time.perf_counter()
            r = client.embeddings.create(model=name, input="How do I set resource limits on a pod?")
            ms = (time.perf_counter() - t0) * 1000
            vec = r.data[0].embedding
            norm = math.sqrt(sum(v * v for v in vec))
            if abs(norm - 1.0) > 1e-3:
                raise RuntimeError(f"embedding norm {norm:.4f}, expected 1")
        except Exception as exc:
            rc = stop_server(proc)
            tail = _tail(log_path)
            return f"smoke check FAILED: {type(exc).__name__}: {exc} (exit {rc}){'; log: ' + tail if tail else ''}"
        rc = stop_server(proc)
        up = time.perf_counter() - t_start
        stopped = "stopped cleanly" if rc == 0 else f"stopped with exit code {rc}"
        return (f"smoke check OK: served '{name}' ({info.get('backend')}) on 127.0.0.1:{port}; 1 embedding, "
                f"dim {len(vec)}, {r.usage.prompt_tokens} tokens, {ms:.0f} ms; {stopped} ({up:.1f}s in all)")
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            log_path.unlink()
        except OSError:
            pass
