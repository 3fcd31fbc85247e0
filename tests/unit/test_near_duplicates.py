"""Near-duplicate grouping at scale: the LSH path finds what the exact all-pairs path finds, follows chains, joins
equal shas, and never groups two films without a verified chain of near pairs."""

from __future__ import annotations

import numpy as np
import pytest

from tune_ct.data import manifest as mf
from tune_ct.data import near_duplicates as nd

MAX_BITS = mf.NEAR_DUPLICATE_BITS


def flipped(row: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """`row` with `bits` distinct random bits flipped: exactly `bits` away."""
    mask = np.zeros(nd.HASH_BITS, np.uint8)
    mask[rng.choice(nd.HASH_BITS, bits, replace=False)] = 1
    return row ^ np.packbits(mask).view(">u8").astype(np.uint64)


def clustered(films: int, rng: np.random.Generator, copy_bits: tuple[int, int] = (0, MAX_BITS)) -> np.ndarray:
    """Hashes that cluster as chest films do: films spread 20-45 bits around a few archetypes (so many pairs
    sit at 40-90 bits, some near the threshold on either side), a third of them with 1-3 near copies."""
    archetypes = rng.integers(0, 2**63, (6, 4), dtype=np.int64).astype(np.uint64)
    rows = []
    while len(rows) < films:
        film = flipped(archetypes[rng.integers(len(archetypes))], int(rng.integers(20, 46)), rng)
        rows.append(film)
        if rng.random() < 1 / 3:
            rows += [flipped(film, int(rng.integers(*copy_bits, endpoint=True)), rng) for _ in range(rng.integers(1, 4))]
    return np.array(rows[:films])


def hexes(rows: np.ndarray) -> list[str]:
    return [r.astype(">u8").tobytes().hex() for r in rows]


def brute_pairs(rows: np.ndarray, max_bits: int) -> set[tuple[int, int]]:
    d = np.bitwise_count(rows[:, None, :] ^ rows[None, :, :]).sum(axis=2)
    return {(i, j) for i, j in zip(*np.nonzero(d <= max_bits)) if i < j}


def exact_labels(rows: np.ndarray, shas: list[str] | None = None) -> np.ndarray:
    shas = shas or [str(i) for i in range(len(rows))]
    return nd.group_labels(rows, shas, MAX_BITS, exact_max=len(rows))


def lsh_labels(rows: np.ndarray, shas: list[str] | None = None, seed: int = nd.SEED) -> np.ndarray:
    shas = shas or [str(i) for i in range(len(rows))]
    return nd.group_labels(rows, shas, MAX_BITS, exact_max=0, seed=seed)


def co_grouped(labels: np.ndarray) -> set[tuple[int, int]]:
    return {(i, j) for g in nd.groups_of(labels) for i in g for j in g if i < j}


def test_exact_pairs_and_near_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    rows = clustered(600, rng)
    # Pairs exactly at the threshold and one bit past it: the boundary is inclusive.
    rows = np.vstack([rows, rows[0], flipped(rows[0], MAX_BITS, rng), flipped(rows[1], MAX_BITS + 1, rng)])
    expected = brute_pairs(rows, MAX_BITS)
    a, b = nd.exact_pairs(rows, MAX_BITS, block_cells=10_000)  # small blocks: many block boundaries
    assert set(zip(a.tolist(), b.tolist())) == expected
    assert (0, 600) in expected and (0, 601) in expected and (1, 602) not in expected
    assert mf.near_pairs(hexes(rows), MAX_BITS) == sorted(expected)


def test_lsh_groups_equal_exact_groups_on_clustered_hashes():
    # Copies up to 16 bits apart: a pair is missed by all 96 tables with probability < 1e-9.
    rng = np.random.default_rng(2)
    rows = clustered(4000, rng, copy_bits=(0, 16))
    exact = exact_labels(rows)
    assert len(co_grouped(exact)) > 1000  # the set really holds groups
    assert np.array_equal(lsh_labels(rows), exact)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lsh_meets_the_recall_bound_with_copies_up_to_the_threshold(seed):
    rng = np.random.default_rng(10 + seed)
    rows = clustered(4000, rng)
    exact, lsh = exact_labels(rows), lsh_labels(rows, seed=seed)
    a, b = nd.exact_pairs(rows, MAX_BITS)
    assert np.mean(lsh[a] == lsh[b]) >= 0.99  # pair recall
    exact_groups = [g for g in nd.groups_of(exact) if len(g) > 1]
    lsh_groups = {tuple(g) for g in nd.groups_of(lsh)}
    assert sum(tuple(g) in lsh_groups for g in exact_groups) / len(exact_groups) >= 0.99  # group recall
    assert co_grouped(lsh) <= co_grouped(exact)  # precision 1


def test_a_pair_at_the_threshold_is_found_directly_with_the_planned_probability():
    # 3,000 isolated pairs exactly MAX_BITS apart: each table proposes a pair with probability key_share;
    # 96 tables miss one with probability 0.005 (binomial sd 0.0013 here), so 0.99 leaves 3.9 sd.
    rng = np.random.default_rng(3)
    firsts = rng.integers(0, 2**63, (3000, 4), dtype=np.int64).astype(np.uint64)
    rows = np.vstack([np.vstack([f, flipped(f, MAX_BITS, rng)]) for f in firsts])
    lsh = lsh_labels(rows)
    found = np.mean(lsh[0::2] == lsh[1::2])
    key_bits, tables = nd.plan(MAX_BITS)
    assert 1 - (1 - nd.key_share(MAX_BITS, key_bits)) ** tables >= nd.RECALL
    assert found >= 0.99, found


def reference_groups(rows: np.ndarray, shas: list[str]) -> set[frozenset[int]]:
    """Groups by brute force and a plain union-find: an implementation independent of the module's."""
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    same = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows)) if shas[i] == shas[j]]
    for i, j in sorted(brute_pairs(rows, MAX_BITS)) + same:
        parent[root(j)] = root(i)
    members: dict[int, set[int]] = {}
    for i in range(len(rows)):
        members.setdefault(root(i), set()).add(i)
    return {frozenset(m) for m in members.values()}


def as_groups(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(g) for g in nd.groups_of(labels)}


def test_chains_join_transitively_and_nothing_joins_past_the_threshold():
    rng = np.random.default_rng(4)
    start = rng.integers(0, 2**63, 4, dtype=np.int64).astype(np.uint64)
    chain = [start]
    for _ in range(5):  # each link 14 bits from the last: the ends lie far apart, yet the chain is one group
        chain.append(flipped(chain[-1], 14, rng))
    apart = [flipped(start, MAX_BITS + 1 + i, rng) for i in range(4)]  # 29-32 bits from the chain's start
    noise = rng.integers(0, 2**63, (500, 4), dtype=np.int64).astype(np.uint64)
    rows = np.vstack(chain + apart + [noise])
    d = np.bitwise_count(rows[:10, None, :] ^ rows[None, :10, :]).sum(axis=2)
    assert d[0, 5] > MAX_BITS and d[:6, 6:10].min() > MAX_BITS  # the setting the test needs
    shas = [str(i) for i in range(len(rows))]
    expected = reference_groups(rows, shas)
    assert frozenset(range(6)) in expected
    for labels in (exact_labels(rows), lsh_labels(rows)):
        assert as_groups(labels) == expected


def test_equal_shas_group_films_whose_hashes_differ():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2**63, 4, dtype=np.int64).astype(np.uint64)
    b = flipped(a, 10, rng)  # near a
    c = rng.integers(0, 2**63, 4, dtype=np.int64).astype(np.uint64)  # far from both, same pixels as b
    d = rng.integers(0, 2**63, 4, dtype=np.int64).astype(np.uint64)  # same pixels as nothing
    rows = np.vstack([a, b, c, d])
    shas = ["sa", "sb", "sb", "sd"]
    for labels in (nd.group_labels(rows, shas, MAX_BITS, exact_max=4), nd.group_labels(rows, shas, MAX_BITS, exact_max=0)):
        assert nd.groups_of(labels) == [[0, 1, 2], [3]]


def test_a_large_bucket_still_joins_into_one_group():
    # 300 identical hashes and 300 copies within 8 bits: one bucket far larger than the window.
    rng = np.random.default_rng(6)
    film = rng.integers(0, 2**63, 4, dtype=np.int64).astype(np.uint64)
    rows = np.vstack([film] * 300 + [flipped(film, int(rng.integers(1, 9)), rng) for _ in range(300)]
                     + [rng.integers(0, 2**63, (400, 4), dtype=np.int64).astype(np.uint64)])
    groups = nd.groups_of(lsh_labels(rows))
    assert groups[0] == list(range(600)) and all(len(g) == 1 for g in groups[1:])


def test_group_duplicates_on_entries_takes_either_path_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(7)
    rows = clustered(1500, rng, copy_bits=(0, 16))
    entries = [mf.Entry(f"f{i}.png", "Normal", f"sha{i % 1400}", h, 1, 0) for i, h in enumerate(hexes(rows))]
    exact = mf.group_duplicates(entries, MAX_BITS)  # 1,500 films: the exact path
    assert exact == sorted(exact) and all(g == sorted(g) for g in exact)
    assert sorted(i for g in exact for i in g) == list(range(1500))
    monkeypatch.setattr(nd, "EXACT_MAX", 100)
    assert mf.group_duplicates(entries, MAX_BITS) == exact  # the LSH path, seeded: the same groups
    assert mf.group_duplicates(entries, MAX_BITS) == exact  # and again: deterministic
    assert mf.group_duplicates([], MAX_BITS) == []
    assert mf.group_duplicates(entries[:1], MAX_BITS) == [[0]]


def test_plan_covers_the_threshold():
    assert nd.plan(0) == (nd.KEY_BITS, 1)  # identical hashes always share a key
    for max_bits in (4, 16, 28, 40, 60):
        key_bits, tables = nd.plan(max_bits)
        assert tables <= nd.MAX_TABLES
        assert 1 - (1 - nd.key_share(max_bits, key_bits)) ** tables >= nd.RECALL
    assert nd.plan(200) is None  # hopeless for LSH: every pair is compared


def test_bucket_pairs_lists_every_pair_in_a_bucket_up_to_the_window():
    keys = np.array([1, 1, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5], np.uint64)  # sorted keys of 13 hashes
    order = np.arange(len(keys))[::-1].copy()  # the hash at each sorted place
    a, b = nd.bucket_pairs(order, keys, window=4)
    got = {(int(x), int(y)) for x, y in zip(a, b)}
    want = {(int(order[i]), int(order[j])) for i in range(len(keys)) for j in range(i + 1, min(i + 5, len(keys)))
            if keys[i] == keys[j]}
    assert got == want
    assert len(got) == 3 + 1 + 18  # the 7-hash bucket: 21 pairs less the 3 more than 4 places apart
