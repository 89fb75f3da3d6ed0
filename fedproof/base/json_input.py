"""JSON from outside, parsed only once its nesting is known to be shallow.

``json.loads`` recurses once per level of nesting: at Python's default limit a deeply nested document raises
``RecursionError``, and in a process whose limit was raised (a library may do so) it can overflow the C stack and
crash the interpreter. Every file fedproof reads from another party is a few levels deep, so the loaders ask for
a bound and get a ``ValueError`` past it, which each turns into its own typed error.
"""

from __future__ import annotations

import json
import re

MAX_DEPTH = 32
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH):
    """``json.loads(text)``, refused with ``ValueError`` when arrays and objects nest deeper than ``max_depth``."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text)
