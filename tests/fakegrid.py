"""Flower's Grid in a unit test: each node answers a message through a handler, or not at all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

from flwr.app import Error, Message, RecordDict

#: (node id, message) -> the reply's content, an Error, or None for no reply.
Handler = Callable[[int, Message], "RecordDict | Error | None"]


class FakeGrid:
    def __init__(self, nodes: list[int], **handlers: Handler) -> None:
        """``handlers`` by message type with '.' as '_': ``train``, ``evaluate``, ``query_decrypt_share``."""
        self.nodes, self.handlers = nodes, handlers
        self.asked: dict[str, list[int]] = {}
        self._replies: dict[str, Message | None] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages) -> list[str]:
        """Each node answers at once; the replies wait for ``pull_messages``, as on a SuperLink."""
        ids = []
        for msg in messages:
            kind, node = msg.metadata.message_type, msg.metadata.dst_node_id
            self.asked.setdefault(kind, []).append(node)
            msg.metadata.__dict__["_message_id"] = message_id = f"m{len(self._replies) + len(ids)}-{id(msg)}"
            ids.append(message_id)
            handler = self.handlers.get(kind.replace(".", "_"))
            answer = handler(node, msg) if handler else None
            self._replies[message_id] = Message(answer, reply_to=msg) if answer is not None else None
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [reply for i in list(message_ids) if (reply := self._replies.pop(i, None)) is not None]


@contextmanager
def virtual_time() -> Iterator[None]:
    """``fl_server.exchange`` waits on a clock that its own sleeps advance: a silent node's timeout passes at once."""
    import fl_server.exchange as ex

    now = [0.0]
    with mock.patch.object(ex, "monotonic", lambda: now[0]), \
            mock.patch.object(ex, "wait", lambda seconds: now.__setitem__(0, now[0] + seconds)):
        yield
