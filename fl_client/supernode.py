"""``flower-supernode``, stopped at once by SIGINT, SIGTERM or SIGQUIT, however far it got.

Two gaps in the stock SuperNode (flwr 1.41), both found by ``tests/test_device_stop.py``:

- A signal that arrives while it is still importing ends it with a KeyboardInterrupt traceback. Our handlers are
  installed before any Flower import.
- Once running, its own handler (``flwr.supercore.exit.register_signal_handlers``) runs a graceful exit that did
  not return: SIGTERM left the SuperNode and its executor running, and a later SuperNode on the same port got
  the old executor's polls. Here the SuperNode's registration of handlers keeps ours: they stop its gRPC servers
  without a grace period and end the process. It holds nothing to flush (its node state is in memory; the
  device's privacy history is written atomically by the executor after each round), and its executor follows
  it within a second (``fl_client.app_runner``).
"""

from __future__ import annotations

import os
import signal
import sys

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
_servers: list = []


def _stop(signum: int, _frame) -> None:
    for server in _servers:
        try:
            server.stop(grace=None)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
    sys.stderr.write(f"SuperNode stopped ({signal.Signals(signum).name})\n")
    sys.stderr.flush()
    os._exit(0)


def _keep_our_handlers(event_type=None, exit_message=None, grpc_servers=None, bckg_threads=None,
                       exit_handlers=None) -> None:
    """In place of Flower's ``register_signal_handlers``: remember the servers to stop, keep :func:`_stop`."""
    _servers.extend(grpc_servers or [])


if __name__ == "__main__":
    for _signum in _SIGNALS:
        signal.signal(_signum, _stop)
    import flwr.supernode.start_client_internal as _start

    _start.register_signal_handlers = _keep_our_handlers
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())
