"""Cut a small BEIR dataset out of a large one, for quality runs that fit a CPU session.

    python bench/beir_subset.py ../shared/datasets/nfcorpus eft-workspace/nfmini --start 0 --count 300

Keeps documents [start, start + count) of corpus.jsonl, the judgements of qrels/{train,test}.tsv (``--splits``)
on them, and the queries those judgements name: the layout bench/quality.py and examples/nfcorpus.yaml read. Written by hand because
beir's GenericDataLoader reads a dataset but does not write one, and the subset must keep the files' own lines
(ids, titles, metadata) byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


class SubsetError(Exception):
    pass


def _ids_of(lines: list[str], path: Path) -> list[str]:
    ids = []
    for i, line in enumerate(lines, 1):
        try:
            ids.append(str(json.loads(line)["_id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SubsetError(f"{path} line {i}: not a JSON object with an _id") from None
    return ids


def cut(src: Path, dst: Path, start: int, count: int,
        splits: tuple[str, ...] = ("train", "test")) -> dict[str, tuple[int, int]]:
    """Write the subset to ``dst``; returns {split: (judgements, queries)}."""
    corpus = src / "corpus.jsonl"
    qrels = [src / "qrels" / f"{split}.tsv" for split in splits]
    for needed in (corpus, src / "queries.jsonl", *qrels):
        if not needed.is_file():
            raise SubsetError(f"{needed} not found: {src} is not a BEIR folder with those splits")
    if start < 0 or count < 1:
        raise SubsetError("--start must be >= 0 and --count >= 1")
    if dst.resolve() == src.resolve():
        raise SubsetError("the subset folder must differ from the source folder")
    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines(keepends=True) if ln.strip()]
    docs = lines[start:start + count]
    if not docs:
        raise SubsetError(f"{corpus} has {len(lines)} documents: none from --start {start}")
    doc_ids = set(_ids_of(docs, corpus))

    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    (dst / "corpus.jsonl").write_text("".join(docs), encoding="utf-8")
    kept_queries: set[str] = set()
    counts = {}
    for path in qrels:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows or len(rows[0]) < 3:
            raise SubsetError(f"{path}: expected a header and query-id, corpus-id, score columns")
        keep = [r for r in rows[1:] if len(r) >= 3 and r[1] in doc_ids]
        kept_queries |= {r[0] for r in keep}
        with (dst / "qrels" / path.name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([rows[0], *keep])
        counts[path.stem] = (len(keep), len({r[0] for r in keep}))
    queries = src / "queries.jsonl"
    q_lines = [ln for ln in queries.read_text(encoding="utf-8").splitlines(keepends=True) if ln.strip()]
    (dst / "queries.jsonl").write_text(
        "".join(ln for ln, qid in zip(q_lines, _ids_of(q_lines, queries)) if qid in kept_queries), encoding="utf-8")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/*.tsv")
    ap.add_argument("dest", type=Path, help="folder to write the subset to")
    ap.add_argument("--start", type=int, default=0, help="first document (line of corpus.jsonl), from 0")
    ap.add_argument("--count", type=int, default=300, help="how many documents")
    ap.add_argument("--splits", default="train,test", help="qrels files to cut, comma-separated")
    args = ap.parse_args(argv)
    try:
        counts = cut(args.source, args.dest, args.start, args.count, tuple(filter(None, args.splits.split(","))))
    except SubsetError as exc:
        print(f"beir_subset: {exc}", file=sys.stderr)
        return 2
    for split, (judgements, queries) in counts.items():
        print(f"{split}: {judgements} judgements over {queries} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
