"""A real uvicorn server in a thread of the test process, for tests that need several servers
and not the process boundary (that is covered by tests/test_serving.py's ServerProcess)."""

from __future__ import annotations

import threading
import time

import uvicorn

from components.serving import ServeConfig, create_app, free_port


class ThreadedServer:
    """``searchtune serve``'s app on 127.0.0.1, in a thread; a context manager."""

    def __init__(self, config: ServeConfig) -> None:
        if config.port == 0:
            config = ServeConfig(**{**config.__dict__, "port": free_port()})
        self.config = config
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host=config.host, port=config.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="test-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the threaded test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
