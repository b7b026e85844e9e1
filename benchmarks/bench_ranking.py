"""Time a full ranking at Fashion200k's size: Q queries against N gallery embeddings, top k, one item excluded per query.

    python benchmarks/bench_ranking.py                                # torch, 33,480 x 29,789 x 512, k = 100
    python benchmarks/bench_ranking.py --backend faiss                # FAISS's exact IndexFlatIP
    python benchmarks/bench_ranking.py --backend plain --chunk 1024   # the ranking before issue 13, for comparison

The embeddings are random and unit length (as real ones are), seeded; each query excludes one
random gallery item (its source image). Prints the seconds of each full ranking, their median,
and the peak memory the ranking added to the process (the resident set's high-water mark,
reset before each repeat; Linux only). The process's CPU time (all threads) is printed beside
each repeat: on a shared machine it moves less than the wall time does. ``--check N`` compares the first N queries' rankings with a
stable descending sort of their full similarity rows (outside the timing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compose_retrieval.ranking import top_k


def plain_top_k(queries, gallery, k, exclude, chunk):
    """The ranking before issue 13: per chunk, a fresh (chunk, N) product, the exclusion and torch.topk."""
    k = min(k, gallery.shape[0] - 1)
    out = torch.empty(queries.shape[0], k, dtype=torch.long)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        sims = q @ gallery.T
        ex = exclude[start : start + chunk]
        rows = torch.nonzero(ex >= 0).squeeze(1)
        sims[rows, ex[rows]] = float("-inf")
        out[start : start + len(q)] = sims.topk(k, dim=1).indices
    return out


def _memory_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=33480)
    parser.add_argument("--gallery", type=int, default=29789)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=1024, help="queries ranked at a time (torch and plain)")
    parser.add_argument("--backend", choices=["torch", "faiss", "plain"], default="torch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch's threads (and FAISS's)")
    parser.add_argument("--repeats", type=int, default=3, help="full rankings timed; the median is reported")
    parser.add_argument("--check", type=int, default=256, help="queries checked against a full stable sort (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.backend == "faiss":
        try:
            import faiss
        except ImportError:
            sys.exit('--backend faiss needs FAISS: pip install "compose-retrieval[faiss]"')
        faiss.omp_set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    queries = F.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=1)
    gallery = F.normalize(torch.randn(args.gallery, args.dim, generator=gen), dim=1)
    exclude = torch.randint(0, args.gallery, (args.queries,), generator=gen)

    def rank():
        if args.backend == "plain":
            return plain_top_k(queries, gallery, args.k, exclude, args.chunk)
        return top_k(queries, gallery, args.k, exclude, args.chunk, backend=args.backend)

    print(f"{args.queries} queries x {args.gallery} gallery x {args.dim} dims, top {args.k}, one excluded per query; "
          f"backend {args.backend}, chunk {args.chunk}, {args.threads} threads, torch {torch.__version__}", flush=True)
    seconds, extra, cpu = [], [], []
    ranked = None
    for repeat in range(args.repeats):
        before = _memory_kib("VmRSS") if _reset_peak() else None
        start, cpu_start = time.perf_counter(), time.process_time()
        ranked = rank()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        peak = _memory_kib("VmHWM")
        if before is not None and peak is not None:
            extra.append((peak - before) / 1024)
        print(f"  repeat {repeat + 1}: {seconds[-1]:.2f} s (cpu {cpu[-1]:.2f} s)" + (f", peak extra memory {extra[-1]:.0f} MiB" if extra else ""), flush=True)
    print(f"median {statistics.median(seconds):.2f} s per full ranking over {args.repeats} repeats (cpu {statistics.median(cpu):.2f} s)"
          + (f"; peak extra memory {max(extra):.0f} MiB" if extra else "; peak memory not measured (no /proc)"))
    if args.check and ranked is not None:
        n = min(args.check, args.queries)
        sims = queries[:n] @ gallery.T
        sims[torch.arange(n), exclude[:n]] = float("-inf")
        expected = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, : ranked.shape[1]]
        same = int((ranked[:n] == expected).all(1).sum())
        print(f"check: {same} of the first {n} queries ranked exactly as a full stable sort ranks them")


if __name__ == "__main__":
    main()
