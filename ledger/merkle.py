"""A sorted SHA-256 Merkle tree over a round's leaves: one 32-byte root on chain, whatever the number of clients.

Leaves are hashed with a 0x00 prefix and inner nodes with 0x01 (so an inner node can never pass for a leaf),
leaf hashes are sorted before building (the root does not depend on arrival order), and each pair is hashed in
sorted order (so a proof is just the list of siblings, with no left/right flags). An odd node is carried up
unchanged. The root of no leaves is 32 zero bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ledger.errors import MerkleProofError

EMPTY_ROOT = bytes(32)


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + min(a, b) + max(a, b)).digest()


class MerkleTree:
    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaf_hashes = sorted(leaf_hash(leaf) for leaf in leaves)
        self.levels: list[list[bytes]] = [self.leaf_hashes]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            self.levels.append([_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                                for i in range(0, len(level), 2)])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.leaf_hashes else EMPTY_ROOT

    def proof(self, leaf: bytes) -> list[bytes]:
        """Siblings from ``leaf`` up to the root; :class:`MerkleProofError` if the leaf is not in the tree."""
        if not hasattr(self, "_index"):  # one dict for many proofs (a draw's list: one per candidate)
            self._index = {h: i for i, h in enumerate(self.leaf_hashes)}
        index = self._index.get(leaf_hash(leaf))
        if index is None:
            raise MerkleProofError("leaf is not in this tree")
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def verify_proof(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> None:
    """Raise :class:`MerkleProofError` unless ``proof`` leads from ``leaf`` to ``root``."""
    node = leaf_hash(leaf)
    for sibling in proof:
        node = _node(node, sibling)
    if node != root:
        raise MerkleProofError("Merkle proof does not lead to the recorded root")
