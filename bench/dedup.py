"""Near-duplicate grouping at scale: the new grouping (exact below EXACT_MAX, verified LSH above) against
today's all-pairs method, on the shared set's real hashes and on synthetic hashes that cluster like them.

    nice -n 19 python bench/dedup.py --manifest /tmp/dedup_wd/manifests/COVID-19_Radiography_Dataset.manifest.json \
        --external ../shared/data/external_dev [--sizes 20000 100000 1000000] [--today-max 20000] \
        [--exact-max 100000] [--seeds 20] [--repeats 3] [--json /tmp/dedup.json]

Real hashes: every `phash` of a built manifest (`python -m tune_ct.data --data DIR --workdir W`) plus the films of
--external, hashed here with the manifest's own function. On them: today's method (the all-pairs code as it was,
copied below), the new exact path and the LSH path forced on, side by side, with the LSH's recall over --seeds
seeds (its key bits are drawn at random: one seed could be lucky).

Synthetic hashes, drawn to cluster like the real ones (`synthetic`): a new film is a per-bit crossover of a random
real film and one of its 10 nearest real films (each bit from either with probability 1/2; films within the
threshold are no models), so it keeps the real bit biases and the real films' neighbourhoods; then a share of the
films (COPY_SHARE) are replaced by a copy of a random earlier film with bits flipped, the flip count drawn from the
real films' nearest-neighbour distances of at most the threshold (0 bits, an identical hash, included). At the
real set's size the pairwise distance histogram is printed beside the real one. Flipping random bits of real
films instead (tried first) pulls the histogram toward uniform random hashes (mean 124-127 bits against 120, the
61-100-bit tail 20x thinner), which would flatter LSH; the crossover keeps the mean, sd and that tail, and has
~12x the real share of pairs at 29-60 bits and, at 1M, ~9x the real near neighbours per film: harsher on LSH
(more candidates, larger groups), not kinder. Recall is measured where the exact
grouping is affordable (--exact-max); the 1M size is timed, and its candidate counts are reported.

Recall, precision (the LSH against the exact grouping of the same hashes):
- pair recall: share of exact near pairs (distance <= threshold) whose two films end in one LSH group;
- group recall: share of the exact groups of two or more films that the LSH reproduces exactly;
- co-membership recall / precision: of the film pairs one method puts in one group, the share the other also
  does (precision 1 means nothing was joined without a verified chain).
All timings come from one run on one machine, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np

from tune_ct.data import manifest as mf
from tune_ct.data import near_duplicates as nd

COPY_SHARE = 0.025  # calibrated: the synthetic set at the real set's size has as many pairs <= 28 bits as it
NEIGHBOURS = 10


def cpu_info() -> dict:
    """CPU model and flags, from lscpu (the machine behind every timing)."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", "?").strip(), "cores": len(os.sched_getaffinity(0)),
            "avx512f": "avx512f" in flags, "avx512_vpopcntdq": "avx512_vpopcntdq" in flags,
            "python": platform.python_version(), "numpy": np.__version__}


def real_hashes(manifest: Path, external: Path | None) -> list[str]:
    """Every phash of the manifest, then those of the films under `external` (hashed here)."""
    hashes = [e.phash for e in mf.load(manifest).entries]
    if external is not None:
        films = sorted(p for p in external.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        hashes += [mf._pixel_digest(p)[1] for p in films]
    return hashes


# Today's method, as it was before this benchmark: all pairs in chunks of 256 rows, then a Python union-find.
def today_groups(phashes: list[str], max_bits: int, chunk: int = 256) -> list[list[int]]:
    h = np.array([np.frombuffer(bytes.fromhex(p), dtype=">u8") for p in phashes]).astype(np.uint64)
    parent = list(range(len(h)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ h[None, :, :]).sum(axis=2, dtype=np.int32)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows.tolist(), cols.tolist()):
            if start + r < c:
                ra, rb = find(start + r), find(c)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(h)):
        members[find(i)].append(i)
    return sorted(members.values(), key=lambda m: m[0])


def nearest(rows: np.ndarray, k: int, min_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows farther than min_bits, and its nearest-neighbour distance."""
    cols = np.ascontiguousarray(rows.T)
    knn = np.zeros((len(rows), k), np.int64)
    nn = np.zeros(len(rows), np.int64)
    for s in range(0, len(rows), 512):
        block = rows[s : s + 512]
        d = sum(np.bitwise_count(block[:, w, None] ^ cols[w][None]).astype(np.int16) for w in range(4))
        d[np.arange(len(block)), s + np.arange(len(block))] = 999  # not itself
        nn[s : s + 512] = d.min(axis=1)
        knn[s : s + 512] = np.argsort(np.where(d <= min_bits, 998, d), axis=1)[:, :k]
    return knn, nn


def synthetic(real: np.ndarray, n: int, max_bits: int, seed: int) -> np.ndarray:
    """n hashes clustered like `real` (see the module docstring): crossovers of real neighbours, some copied."""
    rng = np.random.default_rng(seed)
    knn, nn = nearest(real, NEIGHBOURS, max_bits)
    real_bits = np.unpackbits(real.view(np.uint8), axis=1)
    out = np.empty((n, real.shape[1]), np.uint64)
    for s in range(0, n, 1 << 16):
        m = min(1 << 16, n - s)
        centre = rng.integers(0, len(real), m)
        other = knn[centre, rng.integers(0, NEIGHBOURS, m)]
        bits = np.where(rng.random((m, 256)) < 0.5, real_bits[other], real_bits[centre])
        out[s : s + m] = np.packbits(bits, axis=1).view(np.uint64)
    flips = nn[nn <= max_bits]
    copies = np.flatnonzero(rng.random(n) < COPY_SHARE)
    for i in copies[copies > 0].tolist():  # in order: a copy may copy an earlier copy, so chains form
        mask = np.zeros(256, np.uint8)
        mask[rng.choice(256, rng.choice(flips), replace=False)] = 1
        out[i] = out[rng.integers(0, i)] ^ np.packbits(mask).view(np.uint64)
    return out


def histogram(rows: np.ndarray, sample: int | None = None, seed: int = 0) -> np.ndarray:
    """Pair counts per distance 0..256: every pair, or `sample` random pairs."""
    if sample is not None:
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, len(rows), sample), rng.integers(0, len(rows), sample)
        return np.bincount(nd.distances(np.ascontiguousarray(rows.T), a[a != b], b[a != b]), minlength=257)
    cols, hist = np.ascontiguousarray(rows.T), np.zeros(257, np.int64)
    for s in range(0, len(rows), 512):
        block = rows[s : s + 512]
        d = sum(np.bitwise_count(block[:, w, None] ^ cols[w][None, s:]).astype(np.int16) for w in range(4))
        upper = np.arange(s, s + len(block))[:, None] < np.arange(s, len(rows))[None, :]
        hist += np.bincount(d[upper], minlength=257)
    return hist


def bands(hist: np.ndarray, max_bits: int) -> dict:
    """Shares of pairs per distance band, with mean and sd (the resemblance check)."""
    d, total = np.arange(257), hist.sum()
    mean = float((hist * d).sum() / total)
    edges = [(0, max_bits), (max_bits + 1, 60), (61, 80), (81, 100), (101, 120), (121, 140), (141, 256)]
    return {"pairs": int(total), "mean": round(mean, 1),
            "sd": round(float(np.sqrt((hist * (d - mean) ** 2).sum() / total)), 1),
            **{f"share_{lo}_{hi}": float(hist[lo : hi + 1].sum() / total) for lo, hi in edges},
            f"pairs_le_{max_bits}": int(hist[: max_bits + 1].sum()),
            f"pairs_{max_bits + 1}_60": int(hist[max_bits + 1 : 61].sum())}


def compare(approx: np.ndarray, exact: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Recall and precision of the `approx` labels against the `exact` ones; (a, b) the exact near pairs."""
    def co_pairs(*labels: np.ndarray) -> int:
        _, counts = np.unique(np.stack(labels), axis=1, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())

    exact_groups = [g for g in nd.groups_of(exact) if len(g) > 1]
    sizes = np.bincount(approx, minlength=len(approx))  # labels are each group's smallest member
    kept = sum(1 for g in exact_groups if np.all(approx[g] == g[0]) and sizes[g[0]] == len(g))
    both, in_approx, in_exact = co_pairs(approx, exact), co_pairs(approx), co_pairs(exact)
    return {"near_pairs": len(a), "pair_recall": float(np.mean(approx[a] == approx[b])) if len(a) else 1.0,
            "exact_groups": len(exact_groups), "group_recall": kept / len(exact_groups) if exact_groups else 1.0,
            "co_membership_recall": both / in_exact if in_exact else 1.0,
            "precision": both / in_approx if in_approx else 1.0}


def sampled_pair_recall(rows: np.ndarray, labels: np.ndarray, max_bits: int, films: int, seed: int = 0) -> dict:
    """Pair recall where the exact grouping is too dear: every exact near pair of `films` random films (each
    compared with all hashes) and the share of them the labels put in one group."""
    sample = np.random.default_rng(seed).choice(len(rows), films, replace=False)
    cols = np.ascontiguousarray(rows.T)
    hits_a, hits_b = [], []
    for s in range(0, films, 64):
        block = rows[sample[s : s + 64]]
        d = sum(np.bitwise_count(block[:, w, None] ^ cols[w][None]).astype(np.int16) for w in range(4))
        r, c = np.nonzero(d <= max_bits)
        hits_a.append(sample[s + r][sample[s + r] != c])
        hits_b.append(c[sample[s + r] != c])
    a, b = np.concatenate(hits_a), np.concatenate(hits_b)
    return {"sampled_films": films, "sampled_near_pairs": len(a),
            "sampled_pair_recall": float(np.mean(labels[a] == labels[b])) if len(a) else 1.0}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_real(hashes: list[str], max_bits: int, seeds: int) -> dict:
    """Today's method, the new exact path and the LSH path (forced on) on the real hashes, side by side."""
    rows, shas = nd.hash_rows(hashes), [str(i) for i in range(len(hashes))]  # shas apart: hashes alone
    today, t_today = timed(today_groups, hashes, max_bits)
    exact, t_exact = timed(nd.group_labels, rows, shas, max_bits)
    assert nd.groups_of(exact) == today, "the new exact grouping differs from today's"
    a, b = nd.exact_pairs(rows, max_bits)
    runs = []
    for seed in range(seeds):
        lsh, t_lsh = timed(nd.group_labels, rows, shas, max_bits, exact_max=0, seed=nd.SEED + seed)
        runs.append({"seconds": t_lsh, **compare(lsh, exact, a, b)})
    worst = min(runs, key=lambda r: (r["pair_recall"], r["group_recall"]))
    t_lsh = float(np.median([r["seconds"] for r in runs]))
    return {"hashes": len(hashes), "today_s": t_today, "new_exact_s": t_exact, "lsh_s": t_lsh,
            "speedup_exact_vs_today": t_today / t_exact, "speedup_lsh_vs_today": t_today / t_lsh,
            "lsh_seeds": seeds, "worst_seed": worst,
            "mean_pair_recall": float(np.mean([r["pair_recall"] for r in runs])),
            "mean_group_recall": float(np.mean([r["group_recall"] for r in runs])),
            "min_precision": min(r["precision"] for r in runs),
            "near_neighbours_per_film": 2 * len(a) / len(hashes),
            "near_pair_distances": np.bincount(nd.distances(np.ascontiguousarray(rows.T), a, b),
                                               minlength=max_bits + 1).tolist()}


def lsh_profile(rows: np.ndarray, max_bits: int) -> dict:
    """The LSH loop of near_duplicates.lsh_link, counting what each table proposes and checks (and peak memory)."""
    key_bits, tables = nd.plan(max_bits)
    rng, labels = np.random.default_rng(nd.SEED), np.arange(len(rows))
    tracemalloc.start()
    cols, slices = np.ascontiguousarray(rows.T), nd.bit_slices(rows)
    proposed = checked = linked = biggest = 0
    for table in range(tables):
        bits = np.sort(rng.choice(nd.HASH_BITS, key_bits, replace=False))
        order, keys = nd.table_order(cols, slices, bits, table)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
        biggest = max(biggest, int(np.diff(starts).max()))
        a, b = nd.bucket_pairs(order, keys)
        proposed += len(a)
        apart = labels[a] != labels[b]
        a, b = a[apart], b[apart]
        checked += len(a)
        near = nd.distances(cols, a, b) <= max_bits
        linked += int(near.sum())
        nd.components(labels, a[near], b[near])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"key_bits": key_bits, "tables": tables, "proposed_pairs": proposed, "checked_pairs": checked,
            "links": linked, "largest_bucket": biggest, "peak_mib": round(peak / 2**20, 1)}


def run_size(real: np.ndarray, n: int, max_bits: int, today_max: int, exact_max: int, repeats: int) -> dict:
    """One synthetic size: the library's grouping (its own choice of path), the LSH path, and the baselines."""
    rows = synthetic(real, n, max_bits, seed=n)
    shas = [str(i) for i in range(n)]
    out: dict = {"hashes": n, "path": "exact" if n <= nd.EXACT_MAX else "lsh"}
    # Shared cores: the median of a few runs, and every run, so a neighbour's burst shows as such.
    out["library_runs_s"] = [timed(nd.group_labels, rows, shas, max_bits)[1] for _ in range(repeats)]
    out["library_s"] = float(np.median(out["library_runs_s"]))
    lsh, out["lsh_s"] = timed(nd.group_labels, rows, shas, max_bits, exact_max=0)
    if n <= today_max:
        hexes = [r.astype(">u8").tobytes().hex() for r in rows]
        _, out["today_s"] = timed(today_groups, hexes, max_bits)
    if n <= exact_max:
        exact, out["new_exact_s"] = timed(nd.group_labels, rows, shas, max_bits, exact_max=n)
        out.update(compare(lsh, exact, *nd.exact_pairs(rows, max_bits)))
        out["lsh_speedup_vs_new_exact"] = out["new_exact_s"] / out["lsh_s"]
        out["near_neighbours_per_film"] = 2 * out["near_pairs"] / n
    else:
        out.update(sampled_pair_recall(rows, lsh, max_bits, films=2000))
        out["near_neighbours_per_film"] = out["sampled_near_pairs"] / out["sampled_films"]
    if "today_s" in out:
        out["library_speedup_vs_today"] = out["today_s"] / out["library_s"]
    out["bands_sampled"] = bands(histogram(rows, sample=10_000_000), max_bits)
    out["lsh_profile"] = lsh_profile(rows, max_bits)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True, help="a built manifest: its phashes are the real set")
    parser.add_argument("--external", type=Path, help="a folder of more real films, hashed here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--today-max", type=int, default=20_000, help="largest size to time today's method at")
    parser.add_argument("--exact-max", type=int, default=100_000, help="largest size to measure recall at")
    parser.add_argument("--seeds", type=int, default=20, help="LSH seeds on the real hashes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the library at each synthetic size")
    parser.add_argument("--max-bits", type=int, default=mf.NEAR_DUPLICATE_BITS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    hashes = real_hashes(args.manifest, args.external)
    real = nd.hash_rows(hashes)
    summary = {"machine": cpu_info(), "load_average_at_start": os.getloadavg(), "max_bits": args.max_bits, "plan": nd.plan(args.max_bits),
               "exact_max": nd.EXACT_MAX, "window": nd.WINDOW}
    summary["real"] = run_real(hashes, args.max_bits, args.seeds)
    print(json.dumps(summary["real"], indent=1), file=sys.stderr, flush=True)
    like = synthetic(real, len(real), args.max_bits, seed=1)
    summary["resemblance"] = {"real": bands(histogram(real), args.max_bits),
                              "synthetic_same_size": bands(histogram(like), args.max_bits)}
    print(json.dumps(summary["resemblance"], indent=1), file=sys.stderr, flush=True)
    summary["synthetic"] = []
    for n in args.sizes:
        summary["synthetic"].append(run_size(real, n, args.max_bits, args.today_max, args.exact_max, args.repeats))
        print(json.dumps(summary["synthetic"][-1], indent=1), file=sys.stderr, flush=True)
    measured = [s for s in summary["synthetic"] if "today_s" in s]
    for size in summary["synthetic"]:
        if "today_s" not in size and measured:  # all pairs: quadratic, from the largest measured size
            base = measured[-1]
            size["today_s_estimated"] = base["today_s"] * (size["hashes"] / base["hashes"]) ** 2
            size["library_speedup_vs_today_estimated"] = size["today_s_estimated"] / size["library_s"]
    summary["load_average_at_end"] = os.getloadavg()
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
