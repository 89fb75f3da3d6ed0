"""Flower's Grid in a unit test: each node answers a message through a handler, or not at all."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Error, Message, RecordDict

#: (node id, message) -> the reply's content, an Error, or None for no reply.
Handler = Callable[[int, Message], "RecordDict | Error | None"]


class FakeGrid:
    def __init__(self, nodes: list[int], **handlers: Handler) -> None:
        """``handlers`` by message type with '.' as '_': ``train``, ``evaluate``, ``query_decrypt``."""
        self.nodes, self.handlers = nodes, handlers
        self.asked: dict[str, list[int]] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            kind, node = msg.metadata.message_type, msg.metadata.dst_node_id
            self.asked.setdefault(kind, []).append(node)
            handler = self.handlers.get(kind.replace(".", "_"))
            answer = handler(node, msg) if handler else None
            if answer is not None:
                replies.append(Message(answer, reply_to=msg))
        return replies
