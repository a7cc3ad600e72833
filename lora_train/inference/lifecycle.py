"""How lora-serve runs and stops: uvicorn on the app, and a drain on SIGTERM / Ctrl-C.

On the first signal the scheduler stops taking requests (new ones are answered 503, waiting ones too), the rows
already generating get `drain_timeout_s` to finish and reach their clients, and only then does uvicorn shut down;
the process exits 0. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def serve(app, batcher, host: str, port: int, log_level: str, drain_timeout_s: float) -> None:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame) -> None:
            if self.draining:  # a second signal: uvicorn's own handling (Ctrl-C again forces the exit)
                return super().handle_exit(sig, frame)
            self.draining = True
            log.warning("%s: draining (new requests get 503; running rows have %.0f s to finish)",
                        signal.Signals(sig).name, drain_timeout_s)
            threading.Thread(target=self._drain, name="lora-drain", daemon=True).start()

        def _drain(self) -> None:
            finished = batcher.close(drain_timeout_s)
            if not finished:
                log.warning("drain timeout: rows still running were cancelled")
            self.should_exit = True

    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    try:
        server.run()
    finally:
        if not server.draining:
            batcher.close()
