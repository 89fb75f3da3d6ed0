"""``flower-supernode``, stopped quietly: a SIGINT or SIGTERM that arrives while it is still importing (a device
stopped as it starts) ends it without a KeyboardInterrupt traceback. Flower installs its own handlers once the
SuperNode runs."""

from __future__ import annotations

import signal
import sys


def _stop(signum: int, _frame) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stop)
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())
