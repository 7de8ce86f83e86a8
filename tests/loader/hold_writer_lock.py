"""Hold a task type's DuckLake writer lock until SIGTERM, as a loader on another host would mid-transaction.

    python -m tests.loader.hold_writer_lock --config PATH TASK_TYPE
"""

import signal
import sys
import threading

from duckstage.config import load_config
from loader.lake import WriterLock


def main(argv):
    config = load_config(argv[argv.index("--config") + 1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = WriterLock(config.loader.database)
    release = lock.acquire(argv[-1], timeout=30)
    print("held", flush=True)
    stop.wait()
    release()
    lock.close()


if __name__ == "__main__":
    main(sys.argv)
