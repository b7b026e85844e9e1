"""Vector search backends (compose_retrieval.vector_search) on N random 512-d unit vectors: build time, single-query
latency, recall@10 against exact search, and the index's size.

    python benchmarks/bench_vector_search.py                                  # N = 100k and 1M, every backend
    python benchmarks/bench_vector_search.py --sizes 100000 --backends hnsw hnsw:m=16,ef_construction=40
    python benchmarks/bench_vector_search.py --sizes 100000 --clustered 1000  # vectors around 1,000 centres

For each N the vectors and the queries are seeded random unit vectors (float32); the
queries are not among the vectors. The truth is the exact top 10 of every query (one
batched ``ranking.top_k``). Each backend is built (timed: the training, for IVF, and the
adding), then searched one query at a time, k = 10, after 3 untimed warm-up queries:
p50 and p99 of those latencies, and recall@10 of their results against the truth. The
exact backend at N >= 1M searches only ``--exact-queries`` of the queries (it takes
~0.1-0.3 s a query there); its recall is 1 by construction and checks the harness.
"index MiB" is the size of the saved ``vectors.faiss`` (the vectors plus the backend's
structure, about what it holds in memory); for exact, the embeddings themselves.

A backend may carry options: ``ivf:nprobe=64``, ``hnsw:m=16,ef_construction=40``; a search-time
option (nprobe, ef_search) may list values, ``hnsw:ef_search=64/256/1024``, each measured on
the same built index (the table's build column then shows " for the repeats).
Random vectors have no cluster structure: the hardest case for IVF and HNSW, whose
recall on real embeddings (which cluster) is higher at the same settings; ``--clustered
C`` draws the vectors and queries around C random centres instead.

Prints the command, the commit, the thread counts and /proc/loadavg before and after
(the machine is shared), then a markdown table. Before building HNSW at a size larger
than one already measured, prints the build time extrapolated as N log N, and skips the
build when that exceeds ``--max-build-s``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compose_retrieval.ranking import top_k
from compose_retrieval.vector_search import SEARCH_BACKENDS, VECTORS_FILE, VectorSearch

K = 10
SEARCH_TIME = ("nprobe", "ef_search")  # options a built index takes at search time


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "compose_retrieval", "benchmarks"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def parse_backend(spec: str) -> tuple[str, dict, list[dict]]:
    """"hnsw:m=16,ef_search=64/256" -> ("hnsw", {"m": 16, "ef_search": 64}, [{"ef_search": 256}]): the build's
    options, then the search-time options measured again on the same index (a search-time option given
    several values, separated by "/")."""
    name, _, rest = spec.partition(":")
    if name not in SEARCH_BACKENDS:
        sys.exit(f"unknown backend {name!r}: one of {', '.join(SEARCH_BACKENDS)}")
    options, again = {}, []
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        values = [json.loads(v) for v in value.split("/")]
        options[key] = values[0]
        again += [{key: v} for v in values[1:]]
    return name, options, again


def unit_vectors(num: int, dim: int, gen: torch.Generator, centres: torch.Tensor | None) -> torch.Tensor:
    """Random unit rows, made a block at a time (no second copy of a 2 GB matrix)."""
    out = torch.empty(num, dim)
    for start in range(0, num, 65536):
        block = out[start : start + 65536]
        torch.randn(block.shape, generator=gen, out=block)
        if centres is not None:  # around random centres: noise of norm ~1, as far from the centre as it is from 0
            which = torch.randint(0, len(centres), (len(block),), generator=gen)
            block.div_(math.sqrt(dim)).add_(centres[which])
        block.div_(block.norm(dim=1, keepdim=True))
    return out


def index_bytes(search: VectorSearch) -> int:
    if search.backend == "exact":
        return search.vectors.numel() * search.vectors.element_size()
    with tempfile.TemporaryDirectory() as tmp:
        search.save(tmp)
        return (Path(tmp) / VECTORS_FILE).stat().st_size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]  # nearest rank


def measure(search: VectorSearch, queries: torch.Tensor, truth: torch.Tensor) -> tuple[list[float], float]:
    """Seconds of each single-query search (after 3 untimed ones) and recall@K of their results against ``truth``."""
    for i in range(min(3, len(queries))):
        search.search(queries[i : i + 1], K)
    latencies, hits = [], 0
    for i in range(len(queries)):
        q = queries[i : i + 1]
        start = time.perf_counter()
        _, ids = search.search(q, K)
        latencies.append(time.perf_counter() - start)
        hits += len(set(ids[0].tolist()) & set(truth[i].tolist()))
    return latencies, hits / (len(queries) * K)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per backend")
    parser.add_argument("--exact-queries", type=int, default=50, help="queries timed for exact search at N >= 1M")
    parser.add_argument("--backends", nargs="+", default=list(SEARCH_BACKENDS),
                        help="backends, each optionally with options: ivf:nprobe=16/64 hnsw:m=16,ef_search=64/256")
    parser.add_argument("--threads", type=int, default=None, help="torch's and FAISS's threads (default: theirs)")
    parser.add_argument("--clustered", type=int, default=0, metavar="C", help="vectors around C random centres (0: none)")
    parser.add_argument("--max-build-s", type=float, default=None,
                        help="skip an HNSW build whose time extrapolated from a smaller N exceeds this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    backends = [parse_backend(b) for b in args.backends]

    faiss = None
    if any(name != "exact" for name, _, _ in backends):
        try:
            import faiss
        except ImportError:
            sys.exit('the FAISS backends need FAISS: pip install "compose-retrieval[faiss]"')
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if faiss is not None:
            faiss.omp_set_num_threads(args.threads)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"commit: {commit()}; torch {torch.__version__}" + (f", faiss {faiss.__version__}" if faiss else "")
          + f"; threads: torch {torch.get_num_threads()}" + (f", faiss {faiss.omp_get_max_threads()}" if faiss else "")
          + f"; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"loadavg before: {loadavg()}", flush=True)

    rows, hnsw_builds = [], {}  # hnsw_builds: (options) -> (N, seconds) of the largest measured
    for size in sorted(args.sizes):
        gen = torch.Generator().manual_seed(args.seed)
        centres = F.normalize(torch.randn(args.clustered, args.dim, generator=gen), dim=1) if args.clustered else None
        start = time.perf_counter()
        vectors = unit_vectors(size, args.dim, gen, centres)
        queries = unit_vectors(args.queries, args.dim, gen, centres)
        made = time.perf_counter() - start
        start = time.perf_counter()
        truth = top_k(queries, vectors, K)
        print(f"\nN = {size:,}: vectors made in {made:.1f} s; exact top {K} of {args.queries} queries batched in "
              f"{time.perf_counter() - start:.2f} s", flush=True)
        for name, options, again in backends:
            built = ",".join(f"{k}={v}" for k, v in options.items() if k not in SEARCH_TIME)
            label = name + (":" + built if built else "")
            if name == "hnsw" and hnsw_builds.get(label):
                done, seconds = hnsw_builds[label]
                guess = seconds * size * math.log(size) / (done * math.log(done))
                print(f"  {label}: built in {seconds:.0f} s at N = {done:,}; N log N extrapolates {guess:.0f} s "
                      f"({guess / 60:.1f} min) here", flush=True)
                if args.max_build_s is not None and guess > args.max_build_s:
                    print(f"  {label}: skipped at N = {size:,} (more than --max-build-s {args.max_build_s:g} s)", flush=True)
                    continue
            start = time.perf_counter()
            search = VectorSearch(vectors, name, **options)
            build = time.perf_counter() - start
            if name == "hnsw":
                hnsw_builds[label] = (size, build)
            count = args.exact_queries if name == "exact" and size >= 1_000_000 else args.queries
            size_mib = index_bytes(search) / 2**20
            for n, changes in enumerate([{}] + again):
                search.set_search_options(**changes)
                latencies, recall = measure(search, queries[:count], truth[:count])
                row = dict(N=size, backend=name, options=dict(search.options), build_s=build if n == 0 else None,
                           p50_ms=1e3 * statistics.median(latencies), p99_ms=1e3 * percentile(latencies, 0.99),
                           recall=recall, mib=size_mib, queries=count)
                rows.append(row)
                print(f"  {label}: options {search.options}, build {build:.1f} s, p50 {row['p50_ms']:.2f} ms, "
                      f"p99 {row['p99_ms']:.2f} ms over {count} queries, recall@{K} {recall:.3f}, {size_mib:.0f} MiB; "
                      f"loadavg {loadavg()}", flush=True)
            del search
        del vectors

    print(f"\nloadavg after: {loadavg()}\n")
    kind = f"clustered around {args.clustered} centres" if args.clustered else "random"
    print(f"| N ({kind}) | backend | options | build s | p50 ms | p99 ms | recall@{K} | index MiB | queries |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        build = f"{r['build_s']:.1f}" if r["build_s"] is not None else '"'
        print(f"| {r['N']:,} | {r['backend']} | {opts} | {build} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['recall']:.3f} | {r['mib']:.0f} | {r['queries']} |")


if __name__ == "__main__":
    main()
