"""Score the best validated epoch so far of a train stage that is still running (or was stopped) on a BEIR set.

    python bench/best_epoch_so_far.py WORKSPACE BEIR_DIR [--split test] [--spec examples/nfcorpus.yaml]

A full CPU run on NFCorpus takes hours, and a session can end before the train stage does. The train stage keeps
the weights of its best validated epoch in WORKSPACE/.work/train/best.pt (what it would publish if it stopped
now); this loads them into the spec's base model, as the train stage's publish step does, and scores the base
and that model on BEIR_DIR side by side, as the evaluate stage scores a human-labelled dataset (base model and
prefixes from --spec: the bench's workspaces hold no spec.yaml). The figure is a partial one (an epoch the run
may still beat), never the product's verdict: that is the evaluate stage's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workspace", type=Path)
    p.add_argument("beir", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--spec", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "nfcorpus.yaml")
    args = p.parse_args(argv)

    from eft import metrics
    from eft.models import load_sentence_model
    from eft.spec import load_spec
    from eft.stages.evaluate import EvalSet, evaluate_model
    from eft.stages.train.checkpoints import CheckpointStore

    # The train stage's own store: its file, read as publish reads it (the key only matters for checkpoint.pt).
    store = CheckpointStore(args.workspace / ".work" / "train", key="")
    if not store.best_path.is_file():
        print(f"no {store.best_path}: the train stage has not validated an epoch better than the base model yet, "
              "or it has finished and cleared its work folder (then evaluate/metrics.md has the verdict)",
              file=sys.stderr)
        return 2
    bm = load_spec(args.spec).spec.base_model
    data = metrics.load_beir(args.beir, args.split)
    eval_set = EvalSet(args.beir.name, f"human-labelled, split {args.split}", data, ignore_identical_ids=True)
    out = {}
    for label in ("base", "best epoch so far"):
        model = load_sentence_model(bm, device="cpu")
        if label != "base":
            model.load_state_dict(store.load_best("cpu"))
        out[label] = evaluate_model(model, [eval_set], [1, 10, 100], bm.query_prefix, bm.passage_prefix)[eval_set.name]
        print(f"{label}: nDCG@10 {out[label]['ndcg@10']:.4f}, recall@10 {out[label]['recall@10']:.4f}", flush=True)
    b, t = out["base"]["ndcg@10"], out["best epoch so far"]["ndcg@10"]
    print(f"nDCG@10 {b:.4f} -> {t:.4f} ({metrics.relative_change(b, t) * 100:+.1f}%), {len(data.queries)} queries, "
          f"{len(data.corpus)} documents")
    print("RESULT " + json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
