"""Near-duplicate groups of 256-bit perceptual hashes, exact for small sets and by verified LSH at scale.

Two films are linked when their hashes differ in at most `max_bits` bits or their pixels are identical; groups
are the connected components of those links. Up to EXACT_MAX hashes every pair is compared (7 s at 50k on two
cores, 1.3 s at the Kaggle release's 21k). Above it, bit-sampling LSH proposes candidate pairs: a table keys every hash on KEY_BITS
bits drawn at random, and hashes with equal keys are compared. A pair d bits apart shares a key with probability
C(256-d, k) / C(256, k) whatever the data, so enough tables find every pair at the threshold directly with
probability >= RECALL (closer pairs, and pairs joined through a chain, more often). Every candidate is checked
exactly before it links two films, so nothing is grouped without a real chain of near pairs (precision 1).
The draws are seeded: one input always gives the same groups. Measured in bench/dedup.py (BENCHMARKS.md,
"Near-duplicate grouping at scale").
"""

from __future__ import annotations

import math

import numpy as np

HASH_BITS = 256
EXACT_MAX = 50_000  # at or below: all pairs, exact (seconds); above, LSH (1M hashes in ~10 s)
KEY_BITS = 24  # per LSH table: long keys keep buckets small, at the price of more tables
MAX_TABLES = 160  # a wide threshold gets shorter keys rather than more tables
MIN_KEY_BITS = 8  # shorter keys put ~1/256 of all hashes in one bucket: no better than all pairs
RECALL = 0.995  # chance that one pair exactly at the threshold is proposed by some table
WINDOW = 32  # in a bucket larger than WINDOW + 1, each hash meets only its WINDOW successors in sort order
SEED = 20_240_611


def hash_rows(phashes: list[str]) -> np.ndarray:
    """Hex hashes -> an (n, 4) array of uint64 words, so XOR + popcount runs vectorised."""
    if not phashes:
        return np.zeros((0, HASH_BITS // 64), np.uint64)
    raw = np.frombuffer(bytes.fromhex("".join(phashes)), dtype=">u8")
    if raw.size != len(phashes) * (HASH_BITS // 64):
        raise ValueError(f"perceptual hashes must be {HASH_BITS} bits ({HASH_BITS // 4} hex characters)")
    return raw.astype(np.uint64).reshape(len(phashes), HASH_BITS // 64)


def distances(cols: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between hashes a[i] and b[i], for every i; cols is rows.T, contiguous.

    One word at a time from contiguous columns: gathers of single words run ~10x faster than gathering whole
    rows and summing along the short axis."""
    acc = np.bitwise_count(cols[0][a] ^ cols[0][b]).astype(np.int16)
    for w in range(1, cols.shape[0]):
        acc += np.bitwise_count(cols[w][a] ^ cols[w][b])
    return acc


def exact_pairs(rows: np.ndarray, max_bits: int, block_cells: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """All pairs a < b whose hashes differ in at most max_bits bits (every pair compared: quadratic)."""
    n = len(rows)
    cols = np.ascontiguousarray(rows.T)  # one word of every hash, contiguous, per column pass
    found_a: list[np.ndarray] = [np.zeros(0, np.int64)]
    found_b: list[np.ndarray] = [np.zeros(0, np.int64)]
    step = max(16, block_cells // max(n, 1))  # bounds the (step, n) temporaries to ~10 bytes per cell
    for start in range(0, n, step):
        block = rows[start : start + step]
        # uint8 counts: four words of at most 64 each wrap only at exactly 256 bits, re-checked below.
        acc = np.bitwise_count(block[:, 0, None] ^ cols[0][None, start:])
        for w in range(1, cols.shape[0]):
            acc += np.bitwise_count(block[:, w, None] ^ cols[w][None, start:])
        r, c = np.nonzero(acc <= max_bits)
        upper = r < c  # the block also met itself: keep each pair once, and no film with itself
        found_a.append(start + r[upper])
        found_b.append(start + c[upper])
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    keep = distances(cols, a, b) <= max_bits
    return a[keep], b[keep]


def components(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Merge the components joined by edges (a[i], b[i]), in place; labels name each item's smallest member.

    `labels` must already be flat (labels[labels] == labels and labels[i] <= i), as np.arange(n) is."""
    while a.size:
        la, lb = labels[a], labels[b]
        apart = la != lb  # edges inside one component need nothing
        a, b, la, lb = a[apart], b[apart], la[apart], lb[apart]
        if not a.size:
            break
        # Hook each larger root under the smallest root it meets, then flatten: labels only ever decrease,
        # so no cycle forms, and every round removes at least one root.
        np.minimum.at(labels, np.maximum(la, lb), np.minimum(la, lb))
        while True:
            up = labels[labels]
            if np.array_equal(up, labels):
                break
            labels[:] = up
    return labels


def groups_of(labels: np.ndarray) -> list[list[int]]:
    """Members of every component, each list ascending, lists ordered by their first member."""
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    return [part.tolist() for part in np.split(order, starts[1:])] if len(order) else []


def same_value_edges(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every item to the first item with the same value (equal pixel shas)."""
    first: dict[str, int] = {}
    b = np.fromiter((first.setdefault(v, i) for i, v in enumerate(values)), dtype=np.int64, count=len(values))
    a = np.arange(len(values))
    return a[a != b], b[a != b]


def key_share(d: int, k: int) -> float:
    """Probability that a pair d bits apart agrees on k bits drawn without replacement from 256."""
    return math.prod((HASH_BITS - d - i) / (HASH_BITS - i) for i in range(k)) if d + k <= HASH_BITS else 0.0


def plan(max_bits: int, recall: float = RECALL) -> tuple[int, int] | None:
    """(key bits, tables) so that a pair at max_bits is proposed with probability >= recall; None when only
    keys too short to thin out the candidates (under MIN_KEY_BITS) would do: compare every pair then."""
    for k in range(KEY_BITS, MIN_KEY_BITS - 1, -1):
        p = key_share(max_bits, k)
        if p >= 1.0:
            return k, 1
        if p > 0:
            tables = math.ceil(math.log1p(-recall) / math.log1p(-p))
            if tables <= MAX_TABLES:
                return k, tables
    return None


def bit_slices(rows: np.ndarray, step: int = 1 << 16) -> np.ndarray:
    """(256, ceil(n / 8)) uint8: row j packs bit j of every hash, so a table reads only its key's bits."""
    n = len(rows)
    out = np.zeros((HASH_BITS, (n + 7) // 8), np.uint8)
    for start in range(0, n, step):  # step is a multiple of 8: each chunk fills whole bytes
        bits = np.unpackbits(rows[start : start + step].view(np.uint8), axis=1)
        out[:, start // 8 : start // 8 + (len(bits) + 7) // 8] = np.packbits(bits.T, axis=1)
    return out


def table_order(cols: np.ndarray, slices: np.ndarray, bits: np.ndarray, table: int) -> tuple[np.ndarray, np.ndarray]:
    """One LSH table: (order of the hashes sorted by key, each sorted hash's key).

    The sort key puts the k sampled bits on top and 64 - k bits of one hash word below, so hashes that share a
    bucket sit next to hashes that also share that word's leading bits: the window of a large bucket meets
    its likelier near neighbours first."""
    n, k = cols.shape[1], len(bits)
    picked = np.unpackbits(slices[bits], axis=1, count=n)  # (k, n): the sampled bits, one row per bit
    key = np.zeros(n, np.uint64)
    for j in range(k):  # shift-or per bit: ~6x faster than np.packbits along the first axis
        key |= picked[j].astype(np.uint64) << np.uint64(63 - j)
    order = np.argsort(key | (cols[table % len(cols)] >> np.uint64(k)))
    return order, key[order] >> np.uint64(64 - k)


def bucket_pairs(order: np.ndarray, keys: np.ndarray, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of hashes with equal keys (keys sorted, order their hashes), each with its `window` successors."""
    same = keys[1:] == keys[:-1]
    at = np.flatnonzero(same)  # positions whose successor shares their bucket
    found_a, found_b = [order[at]], [order[at + 1]]
    for offset in range(2, window + 1):
        # keys sorted: position i and i + offset share a bucket iff i + offset - 1 shared it with i
        at = at[at + offset < len(keys)]
        at = at[keys[at + offset] == keys[at]]
        if not at.size:
            break
        found_a.append(order[at])
        found_b.append(order[at + offset])
    return np.concatenate(found_a), np.concatenate(found_b)


def lsh_link(rows: np.ndarray, labels: np.ndarray, max_bits: int, key_bits: int, tables: int,
             seed: int = SEED, window: int = WINDOW) -> np.ndarray:
    """Join labels (in place) along every verified near pair that `tables` random bit-sampled keys propose."""
    rng = np.random.default_rng(seed)
    cols, slices = np.ascontiguousarray(rows.T), bit_slices(rows)
    for table in range(tables):
        bits = np.sort(rng.choice(HASH_BITS, key_bits, replace=False))
        a, b = bucket_pairs(*table_order(cols, slices, bits, table), window=window)
        apart = labels[a] != labels[b]  # a pair already joined by earlier links needs no check
        a, b = a[apart], b[apart]
        near = distances(cols, a, b) <= max_bits
        components(labels, a[near], b[near])
    return labels


def group_labels(rows: np.ndarray, shas: list[str], max_bits: int, exact_max: int | None = None,
                 seed: int = SEED) -> np.ndarray:
    """Component label (smallest member index) of every film: equal shas or hashes within max_bits bits.

    All pairs are compared up to exact_max films (EXACT_MAX when None), seeded LSH above."""
    labels = np.arange(len(rows))
    components(labels, *same_value_edges(shas))
    planned = plan(max_bits)
    if len(rows) <= (EXACT_MAX if exact_max is None else exact_max) or planned is None:
        return components(labels, *exact_pairs(rows, max_bits))
    return lsh_link(rows, labels, max_bits, *planned, seed=seed)
