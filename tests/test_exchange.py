"""The exchange loop: push once, pull until every asked node answered or the timeout passed, polling briefly."""

from __future__ import annotations

import itertools

import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedproof.base.polling import poll_intervals
from fl_server.exchange import MAX_POLL, exchange


@pytest.fixture(autouse=True)
def _task_identity():  # a ServerApp's messages carry the run's id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class SlowGrid:
    """Node n's reply shows up after n pulls; node 0 never answers."""

    def __init__(self) -> None:
        self.pulls, self.pending = 0, {}

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"id-{i}"
            self.pending[f"id-{i}"] = msg
            ids.append(f"id-{i}")
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        ready = [i for i in ids if 0 < self.pending[i].metadata.dst_node_id <= self.pulls]
        return [Message(RecordDict(), reply_to=self.pending.pop(i)) for i in ready]


class Clock:
    def __init__(self) -> None:
        self.now, self.waits = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def messages(*nodes: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]


def test_replies_are_collected_as_they_arrive_with_short_waits() -> None:
    grid, clock = SlowGrid(), Clock()
    replies, missing = exchange(grid, messages(3, 1, 2), 60.0, "train", clock, clock.sleep)
    assert [r.metadata.src_node_id for r in replies] == [1, 2, 3] and missing == []
    assert grid.pulls == 3 and clock.now < 0.1  # seen on the third pull, not after Flower's 3 s ticks


def test_a_silent_node_is_a_rejection_at_the_timeout_not_before() -> None:
    grid, clock = SlowGrid(), Clock()
    replies, missing = exchange(grid, messages(1, 0), 5.0, "decrypt", clock, clock.sleep)
    assert [r.metadata.src_node_id for r in replies] == [1]
    assert [(r.node_id, r.reason.value, r.phase) for r in missing] == [(0, "no-reply", "decrypt")]
    assert clock.now == 5.0 and max(clock.waits) <= MAX_POLL


def test_polls_start_short_and_level_off() -> None:
    waits = list(itertools.islice(poll_intervals(0.01, MAX_POLL), 12))
    assert waits[0] == 0.01 and waits == sorted(waits) and waits[-1] == MAX_POLL


def test_a_simulation_keeps_a_window_of_messages_outstanding_and_collects_every_reply() -> None:
    """Flower's in-memory LinkState scans every stored message to find a node's: a simulated exchange keeps at
    most IN_MEMORY_WINDOW outstanding (a SuperLink gets every message at once), and loses no reply."""
    from flwr.app import RecordDict

    import fl_server.exchange as ex
    from fakegrid import FakeGrid, virtual_time

    class InMemoryGrid(FakeGrid):  # the name is what the exchange recognizes
        outstanding = most = 0

        def push_messages(self, messages):
            ids = super().push_messages(messages)
            self.outstanding += len(ids)
            self.most = max(self.most, self.outstanding)
            return ids

        def pull_messages(self, message_ids):
            replies = super().pull_messages(message_ids)
            self.outstanding -= len(replies)
            return replies

    nodes = list(range(1, 2 * ex.IN_MEMORY_WINDOW + 38))
    grid = InMemoryGrid(nodes, query_x=lambda node, msg: RecordDict())
    with virtual_time():
        replies, rejections = ex.ask(grid, nodes, "query.x", RecordDict(), {}, 1, 60.0)
    assert sorted(r.metadata.src_node_id for r in replies) == nodes and not rejections
    assert grid.most == ex.IN_MEMORY_WINDOW
