"""A real uvicorn server on loopback in a background thread of the test process."""

from __future__ import annotations

from typing import Any


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a background thread of this process (for tests)."""

    def __init__(self, app: Any, port: int | None = None, graceful_timeout: float = 30.0):
        import uvicorn

        from eft.serving.smoke import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self.app = app
        self.thread: Any = None

    def start(self, ready: bool = True, timeout: float = 120.0) -> "ServerThread":
        import threading
        import time

        import httpx

        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        path = "/health/ready" if ready else "/health/live"
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"test server on {self.url} not up after {timeout}s")

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
