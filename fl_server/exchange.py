"""One exchange with a set of nodes: every message sent at once, one reply per asked node collected.

:func:`ask` is the only place the server builds a Flower ``Message``: every phase of a round, the key ceremony
and the decryption and co-signing requests go through it.

Flower's ``Grid.send_and_receive`` waits 3 s between pulls on a SuperLink (``HttpGrid``), which a round of three
exchanges pays three times. This loop uses the Grid's public ``push_messages`` / ``pull_messages`` and pulls
often at first, then every :data:`MAX_POLL` seconds: a reply is seen within a tenth of a second of its arrival,
and a long training exchange costs the SuperLink ten small requests a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import DEBUG

from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedproof.base.polling import poll_intervals
from fedproof.core.protocol import CONFIG_KEY, round_settings
from fedproof.core.replies import Reason, Rejection

FIRST_POLL, MAX_POLL = 0.01, 0.1
monotonic, wait = time.monotonic, time.sleep
IN_MEMORY_WINDOW = 100
"""Messages outstanding at once in a simulation. Flower's in-memory LinkState finds a node's next message by
scanning every message it stores (``InMemoryLinkState.get_message_ins``), so an exchange of n messages pushed at
once costs O(n^2) there: at 10,000 devices the server's core did little else for minutes. A SuperLink's store is
indexed: deployments push everything at once."""


def shares_machine(grid: Grid) -> bool:
    """Whether the clients run beside this ServerApp (Flower's simulation engine: an in-memory Grid), and so share
    its files and its in-memory message store; a SuperLink's clients are devices with their own."""
    return type(grid).__name__ == "InMemoryGrid"


def ask(grid: Grid, nodes: Iterable[int], kind: str, content: RecordDict | Callable[[int], RecordDict],
        settings: Mapping, server_round: int, timeout: float, *, phase: str = "", group: str = "",
        ) -> tuple[list[Message], list[Rejection]]:
    """Send ``content`` (one record for every node, or one per node) with the run's settings for this round to
    each of ``nodes`` as message type ``kind``, and collect one reply per node (:func:`exchange`); a missing reply
    is a rejection in ``phase`` (default: ``kind``)."""
    config = round_settings(settings, server_round)
    if not callable(content):
        content[CONFIG_KEY] = config
    messages = []
    for node in nodes:
        body = content(node) if callable(content) else content
        if callable(content):
            body[CONFIG_KEY] = config
        messages.append(Message(body, dst_node_id=node, message_type=kind, group_id=group or str(server_round)))
    return exchange(grid, messages, timeout, phase or kind)


def exchange(grid: Grid, messages: list[Message], timeout: float, phase: str,
             clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None,
             ) -> tuple[list[Message], list[Rejection]]:
    """Send ``messages`` and collect one reply per asked node; a missing or unasked-for reply is a rejection.
    ``clock`` and ``sleep`` default to :data:`monotonic` and :data:`wait` (unit tests replace those)."""
    clock, sleep = clock or monotonic, sleep or wait
    asked = {m.metadata.dst_node_id for m in messages}
    got: dict[int, Message] = {}
    rejections: list[Rejection] = []
    for reply in _send_and_receive(grid, messages, timeout, clock, sleep) if messages else ():
        node = reply.metadata.src_node_id
        if node not in asked or node in got:
            rejections.append(Rejection(node, f"node-{node}", Reason.UNEXPECTED_SENDER,
                                        "a reply nobody asked this node for", phase))
        else:
            got[node] = reply
    for node in sorted(asked - set(got)):
        rejections.append(Rejection(node, f"node-{node}", Reason.NO_REPLY, f"no reply within {timeout:g} s", phase))
    return [got[n] for n in sorted(got)], rejections


def _send_and_receive(grid: Grid, messages: list[Message], timeout: float, clock: Callable[[], float],
                      sleep: Callable[[float], None]) -> list[Message]:
    """``Grid.send_and_receive``'s contract (push, then pull until every message has its reply or ``timeout``
    passed), with :func:`poll_intervals` between pulls."""
    started = clock()
    window = IN_MEMORY_WINDOW if shares_machine(grid) else len(messages)
    pending, queued = set(grid.push_messages(messages[:window])), messages[window:]
    pushed = clock()
    deadline = clock() + timeout
    replies: list[Message] = []
    for wait in poll_intervals(FIRST_POLL, MAX_POLL):
        for reply in grid.pull_messages(pending):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if queued and len(pending) < window:  # a simulation: keep the window full
            more, queued = queued[: window - len(pending)], queued[window - len(pending):]
            pending |= set(grid.push_messages(more))
        left = deadline - clock()
        if not (pending or queued) or left <= 0:
            log(DEBUG, "%s: %d messages pushed in %.2f s, %d replies after %.2f s", messages[0].metadata.message_type,
                len(messages), pushed - started, len(replies), clock() - started)
            return replies
        sleep(min(wait, left))
    return replies  # unreachable: poll_intervals never ends
