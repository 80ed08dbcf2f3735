"""RFC 9162 (RFC 6962) Merkle tree hashing, proofs and their verifiers. No I/O.

Hashing follows RFC 9162 §2.1.1: ``leaf = SHA-256(0x00 || data)``, ``node =
SHA-256(0x01 || left || right)``, and the empty tree's root is ``SHA-256("")``.
Proof generation follows §2.1.3.1 (inclusion) and §2.1.4.1 (consistency); the
verifiers are the algorithms of §2.1.3.2 and §2.1.4.2, made strict: every hash
must be exactly 32 bytes, sizes and indices are non-negative ints, and proofs
longer than any valid one are rejected before hashing. Failures raise
:class:`~hub.protocol.errors.LogError` with a message naming the failed check.

:class:`MerkleTree` keeps, for every level ``k``, the hashes of all *complete*
aligned subtrees of ``2**k`` leaves, packed into one ``bytearray`` per level
(32 bytes per hash, ~64 bytes of memory per leaf in total). Any subtree the RFC
recursion asks for is then a concatenation of at most ``log2(n)`` cached
complete subtrees, so roots at any past size and both kinds of proof cost
O(log n) hashes, and ``append`` costs one hash amortised.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from hashlib import sha256
from typing import Final

from .errors import LogError

HASH_SIZE: Final[int] = 32
#: Largest tree size accepted anywhere (checkpoints carry sizes as int64/uint64).
MAX_TREE_SIZE: Final[int] = (1 << 63) - 1
#: No valid proof for a tree of at most MAX_TREE_SIZE leaves is longer than this.
MAX_PROOF_HASHES: Final[int] = 2 * 64
#: Root hash of the empty tree, SHA-256 of the empty string (RFC 9162 §2.1.1).
EMPTY_ROOT: Final[bytes] = sha256(b"").digest()

_LEAF_PREFIX: Final[bytes] = b"\x00"
_NODE_PREFIX: Final[bytes] = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """MTH of a one-leaf tree: ``SHA-256(0x00 || data)``."""
    return sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node hash: ``SHA-256(0x01 || left || right)``."""
    return sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        got = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise LogError(f"{what} must be {HASH_SIZE} bytes, got {got}")
    return bytes(value)


def _check_size(value: object, what: str) -> int:
    # bool is an int subclass; a True "size" is a caller bug, not a size of 1.
    if type(value) is not int or not 0 <= value <= MAX_TREE_SIZE:
        raise LogError(f"{what} must be an int in [0, 2**63-1], got {value!r}")
    return value


def _check_proof(proof: Sequence[bytes]) -> list[bytes]:
    if isinstance(proof, (bytes, bytearray, str)):
        raise LogError("proof must be a sequence of hashes, not a single byte string")
    if len(proof) > MAX_PROOF_HASHES:
        raise LogError(f"proof has {len(proof)} hashes, more than any valid proof")
    return [_check_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


def _fold(hashes: list[bytes]) -> bytes:
    """Combine complete subtrees of strictly decreasing size, right to left (RFC 9162 MTH)."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = sha256(_NODE_PREFIX + h + acc).digest()
    return acc


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """Root of the tree with these leaf hashes, in O(n) time and O(log n) memory."""
    # stack holds (height, hash) of complete subtrees, heights strictly decreasing.
    stack: list[tuple[int, bytes]] = []
    for i, h in enumerate(hashes):
        height, cur = 0, _check_hash(h, f"leaf hash {i}")
        while stack and stack[-1][0] == height:
            cur = sha256(_NODE_PREFIX + stack.pop()[1] + cur).digest()
            height += 1
        stack.append((height, cur))
    if not stack:
        return EMPTY_ROOT
    return _fold([h for _, h in stack])


def _split(n: int) -> int:
    """Largest power of two strictly less than ``n`` (n >= 2), the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only in-memory tree of leaf hashes with cached complete subtrees.

    Rebuild it on start from the stored leaf hashes with :meth:`from_leaf_hashes`.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        # _levels[k][32*i : 32*i+32] = hash of leaves [i * 2**k, (i+1) * 2**k).
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> MerkleTree:
        """Build a tree from stored leaf hashes, level by level (about 1 µs per leaf)."""
        items = hashes if isinstance(hashes, list) else list(hashes)
        # Fast path for 1M rows from SQLite: one pass of len(), one join.
        try:
            lengths_ok = not items or set(map(len, items)) == {HASH_SIZE}
            data = b"".join(items) if lengths_ok else b""
        except TypeError:
            lengths_ok = False
        if not lengths_ok:
            for i, h in enumerate(items):
                _check_hash(h, f"leaf hash {i}")
        if len(items) > MAX_TREE_SIZE:
            raise LogError("too many leaves")
        tree = cls()
        level = bytearray(data)
        tree._levels = [level]
        tree._size = len(items)
        while len(level) >= 2 * HASH_SIZE:
            view = memoryview(level)
            pairs = len(level) // (2 * HASH_SIZE) * 2 * HASH_SIZE
            level = bytearray(
                b"".join(
                    [
                        sha256(_NODE_PREFIX + view[i : i + 2 * HASH_SIZE]).digest()
                        for i in range(0, pairs, 2 * HASH_SIZE)
                    ]
                )
            )
            view.release()
            tree._levels.append(level)
        return tree

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash (not leaf data: see :func:`leaf_hash`); return its index."""
        h = _check_hash(leaf, "leaf hash")
        index = self._size
        self._levels[0] += h
        self._size += 1
        # Each trailing 1 bit of the new size is a subtree that just became complete.
        n, k = self._size, 0
        while n & 1 == 0:
            below = self._levels[k]
            parent = sha256(_NODE_PREFIX + below[-2 * HASH_SIZE :]).digest()
            k += 1
            if k == len(self._levels):
                self._levels.append(bytearray())
            self._levels[k] += parent
            n >>= 1
        return index

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if type(index) is not int or not 0 <= index < self._size:
            raise LogError(f"leaf index {index!r} out of range for tree size {self._size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _complete(self, k: int, i: int) -> bytes:
        off = i * HASH_SIZE
        return bytes(self._levels[k][off : off + HASH_SIZE])

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH of leaves [lo, hi); ``lo`` is aligned as in every RFC recursion step."""
        parts: list[bytes] = []
        while lo < hi:
            k = (hi - lo).bit_length() - 1
            parts.append(self._complete(k, lo >> k))
            lo += 1 << k
        return _fold(parts)

    def _check_tree_size(self, size: int, what: str) -> int:
        _check_size(size, what)
        if size > self._size:
            raise LogError(f"{what} {size} exceeds the tree size {self._size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first ``size`` leaves (default: all of them)."""
        n = self._size if size is None else self._check_tree_size(size, "size")
        return EMPTY_ROOT if n == 0 else self._range_hash(0, n)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered leaf to root."""
        self._check_tree_size(size, "tree size")
        if type(index) is not int or not 0 <= index < size:
            raise LogError(f"leaf index {index!r} out of range for tree size {size}")
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1, ordered bottom-up.

        Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove).
        """
        self._check_tree_size(new_size, "new size")
        _check_size(old_size, "old size")
        if old_size > new_size:
            raise LogError(f"old size {old_size} exceeds new size {new_size}")
        if old_size == 0 or old_size == new_size:
            return []
        proof: list[bytes] = []
        lo, hi, m, whole = 0, new_size, old_size, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
                whole = False
        if not whole:
            # SUBPROOF(m, D[m], false): the old tree's subtree is not a prefix
            # the verifier already knows, so it must be sent.
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is at ``index`` in the tree of ``size`` with ``root`` (§2.1.3.2)."""
    h = _check_hash(leaf, "leaf hash")
    expected = _check_hash(root, "root hash")
    _check_size(size, "tree size")
    if type(index) is not int or not 0 <= index < size:
        raise LogError(f"leaf index {index!r} out of range for tree size {size}")
    path = _check_proof(proof)
    fn, sn, r = index, size - 1, h
    for p in path:
        if sn == 0:
            raise LogError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = sha256(_NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LogError("inclusion proof is shorter than the path to the root")
    if not _same(r, expected):
        raise LogError("inclusion proof does not lead to the root hash")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)`` (§2.1.4.2).

    Strict where RFC 9162 and transparency-dev are lax: both roots must be 32
    bytes in every case, including ``old_size == new_size`` (transparency-dev then
    compares roots of any length). ``old_size == 0``: the proof must be empty and
    ``old_root`` must be the empty-tree root; any 32-byte ``new_root`` is accepted,
    as every tree extends the empty one.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    first = _check_hash(old_root, "old root")
    second = _check_hash(new_root, "new root")
    path = _check_proof(proof)
    if old_size > new_size:
        raise LogError(f"old size {old_size} exceeds new size {new_size}")
    if old_size == 0:
        if path:
            raise LogError("consistency proof from the empty tree must be empty")
        if not _same(first, EMPTY_ROOT):
            raise LogError("old root is not the empty-tree root")
        return
    if old_size == new_size:
        if path:
            raise LogError("consistency proof between equal sizes must be empty")
        if not _same(first, second):
            raise LogError("roots differ for the same tree size")
        return
    if not path:
        raise LogError("consistency proof is empty")
    # Step 2: if the old tree is a complete subtree its root is the proof's seed.
    if old_size & (old_size - 1) == 0:
        path = [first, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LogError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = sha256(_NODE_PREFIX + c + fr).digest()
            sr = sha256(_NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LogError("consistency proof is shorter than needed")
    if not _same(fr, first):
        raise LogError("consistency proof does not lead to the old root")
    if not _same(sr, second):
        raise LogError("consistency proof does not lead to the new root")
