"""Waits between polls: short right after something happened (the next thing usually follows soon), then
longer, so an idle poller costs little. Every poll of ours (the server's Grid loop, the Fleet gateway's held
answers, a device's task executor) uses this one schedule."""

from __future__ import annotations

from collections.abc import Iterator


def poll_intervals(first: float = 0.01, cap: float = 0.25, growth: float = 1.5) -> Iterator[float]:
    """``first``, then each wait ``growth`` times the last, up to ``cap``; endless."""
    wait = first
    while True:
        yield wait
        wait = min(cap, wait * growth)
