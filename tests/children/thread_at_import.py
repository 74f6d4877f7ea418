"""A scenario whose import starts a thread (as a client that starts its runtime at import):
``run --warm`` must refuse to fork it and run its cell cold."""

import threading
import time

SERVICES = ()
RUNS = 4
TIMEOUT = 20.0

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()


def main() -> None:
    pass
