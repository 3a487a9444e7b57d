"""Serving a fake provider's ASGI app on 127.0.0.1 from a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp


def start_fake(app: ASGIApp, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serve ``app`` on a free port of ``host`` (uvicorn in a daemon thread).

    Returns the base URL (``http://127.0.0.1:<port>``) and a ``stop()`` that shuts the
    server down and waits for the thread; calling ``stop()`` twice is harmless.
    """
    config = uvicorn.Config(
        app, host=host, port=0, log_level="warning", lifespan="off",
        access_log=False, timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-provider", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("fake provider did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)

    return f"http://{host}:{port}", stop
