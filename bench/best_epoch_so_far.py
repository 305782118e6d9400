"""Score the best validated epoch so far of a train stage that is still running (or was stopped) on a BEIR set.

    python bench/best_epoch_so_far.py WORKSPACE BEIR_DIR [--split test] [--spec examples/nfcorpus.yaml]

A full CPU run on NFCorpus takes hours, and a session can end before the train stage does. The train stage keeps
the weights of its best validated epoch in WORKSPACE/.work/train/best.pt (what it would publish if it stopped
now); this loads them into the spec's base model, as the train stage's publish step does, and prints the base
and that model's metrics on BEIR_DIR side by side (base model and prefixes from --spec: the bench's workspaces
hold no spec.yaml). The figure is
a partial one (an epoch the run may still beat), never the product's verdict: that is the evaluate stage's.
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

    import torch

    from eft import metrics
    from eft.models import load_sentence_model
    from eft.spec import load_spec

    best = args.workspace / ".work" / "train" / "best.pt"
    if not best.is_file():
        print(f"no {best}: the train stage has not validated an epoch better than the base model yet", file=sys.stderr)
        return 2
    bm = load_spec(args.spec).spec.base_model
    data = metrics.load_beir(args.beir, args.split)
    k = [1, 10, 100]
    out = {}
    for label in ("base", "best epoch so far"):
        model = load_sentence_model(bm, device="cpu")
        if label != "base":
            model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
        r = metrics.retrieve(model, data, max(k), bm.query_prefix, bm.passage_prefix)
        out[label] = metrics.score(data.qrels, r.results, k)
        print(f"{label}: nDCG@10 {out[label]['ndcg@10']:.4f}, recall@10 {out[label]['recall@10']:.4f}", flush=True)
    b, t = out["base"]["ndcg@10"], out["best epoch so far"]["ndcg@10"]
    print(f"nDCG@10 {b:.4f} -> {t:.4f} ({metrics.relative_change(b, t) * 100:+.1f}%), {len(data.queries)} queries, "
          f"{len(data.corpus)} documents")
    print("RESULT " + json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
