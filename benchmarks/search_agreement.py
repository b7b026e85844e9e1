"""Does `search` find what evaluation scores? The index path against the evaluation path, query by query.

For a dataset on disk whose gallery images are files (``css`` written by ``compose-retrieval
data make-css``, for example), this evaluates a checkpoint on the dataset's protocol (recall@1,
batched, the evaluation path), then sends every query of that protocol through an index of the
gallery's folder, one ``Index.search(source file, text, k=1)`` at a time (the path a user's
`compose-retrieval search` takes), and counts the queries whose rank-1 result is a hit under the
protocol's rule. The two shares must be equal; the queries whose rank-1 image differs between
the two paths are listed (a near-tie can flip between a batched and a single composition).

    compose-retrieval data make-css --out css --style 2d
    compose-retrieval index css/images --model tirg-css-synthetic --out css-index --include 'css_test_*'
    python benchmarks/search_agreement.py css-index --dataset css --data-root css --protocol 3d
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from compose_retrieval import registry
from compose_retrieval.evaluation import compose_queries, embed_gallery
from compose_retrieval.index import Index
from compose_retrieval.ranking import top_k


def agreement(index: Index, dataset_name: str, data_root: str, protocol_name: str | None, dataset_options: dict,
              limit: int | None = None) -> dict:
    """recall@1 by evaluation and by search of ``index`` on the same queries, and the queries where they differ."""
    dataset = registry.create("dataset", dataset_name, data_root=data_root, **dataset_options)
    dataset.preprocessing = index.preprocessing
    protocol = dataset.protocol(protocol_name)
    gallery_files = [Path(p).resolve() for p in protocol.gallery.paths]
    folder = Path(index.folder).resolve()
    row_of = {folder / p: i for i, p in enumerate(index.paths)}
    missing = [str(p) for p in gallery_files if p not in row_of]
    if missing:
        raise SystemExit(f"{len(missing)} gallery images are not in the index, e.g. {missing[0]}")
    gallery_of_row = {row_of[p]: j for j, p in enumerate(gallery_files)}
    n = len(protocol.query_texts) if limit is None else min(limit, len(protocol.query_texts))
    labels, query_labels = protocol.gallery_labels["label"], protocol.query_labels["label"]

    model = index.model.eval()
    start = time.perf_counter()
    gallery = embed_gallery(model, protocol.gallery)
    queries = compose_queries(model, protocol)[:n]
    evaluated = top_k(queries, gallery, 1, protocol.query_exclude[:n])[:, 0]
    evaluation_s = time.perf_counter() - start

    start = time.perf_counter()
    searched = []
    for i in range(n):
        source = protocol.query_images.paths[int(protocol.query_sources[i])]
        result = index.search(source, protocol.query_texts[i], k=1)
        searched.append(gallery_of_row[row_of[folder / result.paths[0]]])
    search_s = time.perf_counter() - start
    searched = torch.tensor(searched)
    hits_evaluated = labels[evaluated] == query_labels[:n]
    hits_searched = labels[searched] == query_labels[:n]
    differ = torch.nonzero(evaluated != searched).squeeze(1).tolist()
    return {
        "queries": n, "gallery": len(gallery_files),
        "evaluation recall@1": hits_evaluated.float().mean().item(),
        "search rank-1 share": hits_searched.float().mean().item(),
        "queries whose rank-1 image differs": len(differ),
        "of which the hit differs": int((hits_evaluated != hits_searched).sum()),
        "first differing queries": differ[:10],
        "evaluation seconds": round(evaluation_s, 1), "search seconds": round(search_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="an index of the protocol's gallery folder (compose-retrieval index)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries")
    args = parser.parse_args()
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.dataset_opt)}
    index = Index.load(args.index, device="cpu")
    print(json.dumps(agreement(index, args.dataset, args.data_root, args.protocol, options, args.limit), indent=1))


if __name__ == "__main__":
    main()
