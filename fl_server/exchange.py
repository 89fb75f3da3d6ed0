"""One exchange with a set of nodes: every message sent at once, one reply per asked node collected."""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp import Grid

from fedproof.replies import Reason, Rejection


def exchange(grid: Grid, messages: list[Message], timeout: float, phase: str) -> tuple[list[Message], list[Rejection]]:
    """Send ``messages`` and collect one reply per asked node; a missing or unasked-for reply is a rejection."""
    asked = {m.metadata.dst_node_id for m in messages}
    got: dict[int, Message] = {}
    rejections: list[Rejection] = []
    for reply in grid.send_and_receive(messages, timeout=timeout) if messages else ():
        node = reply.metadata.src_node_id
        if node not in asked or node in got:
            rejections.append(Rejection(node, f"node-{node}", Reason.UNEXPECTED_SENDER,
                                        "a reply nobody asked this node for", phase))
        else:
            got[node] = reply
    for node in sorted(asked - set(got)):
        rejections.append(Rejection(node, f"node-{node}", Reason.NO_REPLY, f"no reply within {timeout:g} s", phase))
    return [got[n] for n in sorted(got)], rejections
