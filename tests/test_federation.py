from __future__ import annotations

import pytest

from fedproof.base.errors import ClientsUnavailableError
from fl_server.federation import wait_for_clients


class _Grid:
    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(range(self.nodes))


def test_too_few_clients_fail_with_the_fix() -> None:
    wait_for_clients(_Grid(3), 3, timeout=0)  # enough: returns at once
    with pytest.raises(ClientsUnavailableError, match="only 2 of the 3 expected clients.*num-supernodes=3"):
        wait_for_clients(_Grid(2), 3, timeout=0.05, poll=0.01)
