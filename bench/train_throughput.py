"""Training throughput: the train stage vs sentence-transformers' own trainer, same data, same run, warmed up.

    python bench/train_throughput.py ../shared/datasets/nfcorpus [--batch-size B] [--negatives N]
        [--max-seq-length L] [--steps S] [--warmup-steps W] [--device cpu|cuda]
        [--variants eager,compile,nocache,fp32]

Rows are (query, one relevant document, N random non-relevant documents) built from the dataset's
train qrels. Every contender starts from the base model and trains W + S steps with in-batch + N hard
negatives at the same batch size, sequence length, temperature and precision (bf16 autocast on a GPU or on a
CPU with bf16 units, else fp32), one after another in this process. "warm" is rows/s over the last S steps of
each run (clocked when step W and step W + S have finished on the device); "whole run" counts every step, the first ones
included (where compiling happens), but not model loading, the token cache or the trainer's setup.

Variants of the train stage: eager (training.compile 'never'), compile ('always'), nocache (eager with
the token cache off: per-batch tokenization), fp32 (eager in fp32 where the stage would use bf16 autocast:
what bf16 buys on this machine). Needs the `bench` extra (accelerate, datasets) for
SentenceTransformerTrainer. Prints a table and one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path


def build_rows(dataset: Path, n_rows: int, n_neg: int, seed: int) -> list[dict]:
    from eft.metrics import load_beir
    from eft.textutil import passage_text

    data = load_beir(dataset, "train" if (dataset / "qrels" / "train.tsv").is_file() else "test")
    rng = random.Random(seed)
    doc_ids = list(data.corpus)
    qids = sorted(data.queries)
    rng.shuffle(qids)
    rows = []
    for q in qids[:n_rows]:
        rel = [d for d, g in data.qrels[q].items() if g > 0 and d in data.corpus]
        if not rel:
            continue
        negs = []
        while len(negs) < n_neg:
            d = rng.choice(doc_ids)
            if d not in data.qrels[q] and d not in negs:
                negs.append(d)
        rows.append({"qid": q, "query": data.queries[q],
                     "positive": {"_id": rel[0], "text": passage_text(data.corpus[rel[0]])},
                     "negatives": [{"_id": d, "text": passage_text(data.corpus[d])} for d in negs]})
    return rows


def eft_run(rows, args, variant: str, device: str) -> dict:
    """One train stage run of W + S steps; rows/s from the per-step finishing times in its curve."""
    from eft.pipeline import execute_stage
    from eft.stages.train import modeling
    from eft.spec import parse_document
    from eft.workspace import Workspace, write_json_atomic

    steps = args.warmup_steps + args.steps
    root = Path(tempfile.mkdtemp(prefix="eft-tput-"))
    prep = root / "prepare"
    (prep / "beir" / "qrels").mkdir(parents=True)
    with open(prep / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_json_atomic(prep / "manifest.json", {"stage": "prepare", "status": "succeeded", "outputsDigest": "bench"})
    epochs = min(100, math.ceil(steps / max(1, len(rows) // args.batch_size)) + 1)
    efr = parse_document({"metadata": {"name": "tput"}, "spec": {
        "baseModel": {"maxSeqLength": args.max_seq_length},
        "training": {"batchSize": args.batch_size, "negatives": args.negatives, "maxSteps": steps,
                     "epochs": epochs, "warmupRatio": 0.0,
                     "compile": "always" if variant == "compile" else "never"}}})
    os.environ["EFT_DEVICE"] = device
    if variant == "nocache":
        os.environ["EFT_TOKEN_CACHE"] = "0"
    native_bf16 = modeling.cpu_has_native_bf16
    if variant == "fp32":
        modeling.cpu_has_native_bf16 = lambda: False  # what this CPU would do without bf16 units
    try:
        m = execute_stage(efr, Workspace(root), "train", progress=lambda msg: None)
    finally:
        os.environ.pop("EFT_TOKEN_CACHE", None)
        modeling.cpu_has_native_bf16 = native_bf16
    with open(root / "train" / "training_curve.csv") as f:
        t = {int(r["step"]): float(r["train_seconds"]) for r in csv.DictReader(f) if r["loss"]}
    assert len(t) == steps, f"the stage ran {len(t)} steps, not {steps}"
    d = m["details"]
    out = {"warm": args.steps * args.batch_size / (t[steps] - t[args.warmup_steps]),
           "whole": steps * args.batch_size / t[steps], "first_step_s": t[1],
           "compile": d["compile"], "precision": d["precision"]}
    cache = d.get("tokenCache") or {}
    if cache.get("enabled"):
        out["token_cache"] = {k: cache[k] for k in ("texts", "textSlots", "tokens", "seconds")}
    return out


def st_run(rows, args, device: str) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import TrainerCallback

    from eft.models import load_sentence_model
    from eft.spec import BaseModelSpec
    from eft.stages.train.modeling import uses_bf16

    model = load_sentence_model(BaseModelSpec(max_seq_length=args.max_seq_length), device=device)
    cols = {"anchor": [r["query"] for r in rows], "positive": [r["positive"]["text"] for r in rows]}
    for j in range(args.negatives):
        cols[f"negative_{j + 1}"] = [r["negatives"][j]["text"] for r in rows]
    ds = Dataset.from_dict(cols)
    times: dict[int, float] = {}
    marks = {1, args.warmup_steps, args.warmup_steps + args.steps}

    class Clock(TrainerCallback):
        # Waits for the device only at the steps that bound the windows: a wait in every step would take
        # away the overlap of tokenizing the next batch with the device's work on this one.
        def _now(self) -> float:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args_, state, control, **k):
            times[0] = self._now()

        def on_step_end(self, args_, state, control, **k):
            if state.global_step in marks:
                times[state.global_step] = self._now()

    out_dir = tempfile.mkdtemp(prefix="st-tput-")
    steps = args.warmup_steps + args.steps
    targs = SentenceTransformerTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, max_steps=steps, learning_rate=1e-5,
        warmup_steps=0, weight_decay=0.01, disable_tqdm=True, bf16=uses_bf16(device),
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", logging_steps=10**6, report_to="none",
        dataloader_drop_last=True, use_cpu=not device.startswith("cuda"), seed=42)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=50.0), callbacks=[Clock()])
    trainer.train()
    w, e = args.warmup_steps, steps
    return {"warm": args.steps * args.batch_size / (times[e] - times[w]),
            "whole": steps * args.batch_size / (times[e] - times[0]), "first_step_s": times[1] - times[0]}


VARIANTS = {"eager": "eft train stage (eager)", "compile": "eft train stage (compiled)",
            "nocache": "eft train stage (eager, no token cache)", "fp32": "eft train stage (eager, fp32)"}


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="BEIR folder with qrels/train.tsv (or test.tsv)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 on GPU, 16 on CPU")
    ap.add_argument("--negatives", type=int, default=None, help="hard negatives per row; default 4 on GPU, 1 on CPU")
    ap.add_argument("--max-seq-length", type=int, default=None, help="default 256 on GPU, 128 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 60 on GPU, 6 on CPU")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first; default 10 on GPU, 2 on CPU")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    ap.add_argument("--variants", default="eager,compile",
                    help="train stage variants, comma-separated: eager, compile, nocache, fp32 (default: eager,compile)")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.negatives = args.negatives if args.negatives is not None else (4 if gpu else 1)
    args.max_seq_length = args.max_seq_length or (256 if gpu else 128)
    args.steps = args.steps or (60 if gpu else 6)
    args.warmup_steps = max(1, args.warmup_steps if args.warmup_steps is not None else (10 if gpu else 2))
    if not gpu:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Both contenders may use every core to tokenize (the train stage does so on GPU).
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if gpu else "false"

    rows = build_rows(args.dataset, args.batch_size * (args.steps + args.warmup_steps + 1), args.negatives, seed=0)
    dev = torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"train throughput on {args.dataset.name}: {len(rows)} rows, batch {args.batch_size}, "
          f"{args.negatives} hard negative(s) + in-batch, max_seq_length {args.max_seq_length}, device {dev}")
    print(f"each contender: {args.warmup_steps} warm-up steps then {args.steps} timed steps, one after another "
          "in this process", flush=True)

    from eft.stages.train.modeling import precision_name

    results: dict[str, dict] = {"SentenceTransformerTrainer": {**st_run(rows, args, args.device),
                                                               "precision": precision_name(args.device)}}
    print(f"  SentenceTransformerTrainer done: warm {results['SentenceTransformerTrainer']['warm']:.1f} rows/s", flush=True)
    for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        results[VARIANTS[v]] = r = eft_run(rows, args, v, args.device)
        print(f"  {VARIANTS[v]} done: warm {r['warm']:.1f} rows/s", flush=True)
        if v == "compile" and not r["compile"]["enabled"]:
            print(f"    (compiling failed, it ran eagerly: {r['compile'].get('failed')})")

    st = results["SentenceTransformerTrainer"]["warm"]
    print(f"\n{'contender':40s} {'precision':>13s} {'warm rows/s':>12s} {'vs ST':>7s} {'whole run':>10s} {'1st step s':>10s}")
    for name, r in results.items():
        print(f"{name:40s} {r.get('precision', ''):>13s} {r['warm']:12.1f} {r['warm'] / st:6.2f}x {r['whole']:10.1f} "
              f"{r['first_step_s']:10.2f}")
    for name, r in results.items():
        if "token_cache" in r:
            c = r["token_cache"]
            print(f"token cache ({name}): {c['texts']} distinct texts for {c['textSlots']} uses, {c['tokens']} tokens, "
                  f"built in {c['seconds']}s before the first step")
            break
    print("RESULT " + json.dumps({"device": dev, "batch_size": args.batch_size, "negatives": args.negatives,
                                  "max_seq_length": args.max_seq_length, "warmup_steps": args.warmup_steps,
                                  "steps": args.steps, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
