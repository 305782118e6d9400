"""Training throughput: the train stage's loop vs sentence-transformers' own trainer, same data, same run.

    python bench/train_throughput.py ../shared/datasets/nfcorpus [--batch-size B] [--negatives N]
        [--max-seq-length L] [--steps S] [--warmup-steps W] [--device cpu|cuda]

Rows are (query, one relevant document, N random non-relevant documents) built from the dataset's
train qrels. Both contenders start from the base model, train with in-batch + N hard negatives at the
same batch size, sequence length, temperature and precision (bf16 autocast on GPU, fp32 on CPU), and
are warmed up with W steps in the same process before S timed steps. Only the steps are timed (not
model loading nor the trainer's setup). Needs the `bench` extra (accelerate, datasets) for
SentenceTransformerTrainer.
"""

from __future__ import annotations

from pathlib import Path


import argparse
import json
import os
import random
import tempfile
import time



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


def eft_rows_per_second(rows, args, steps: int, device: str) -> float:
    from eft.pipeline import execute_stage
    from eft.spec import parse_document
    from eft.workspace import Workspace, write_json_atomic

    root = Path(tempfile.mkdtemp(prefix="eft-tput-"))
    prep = root / "prepare"
    (prep / "beir" / "qrels").mkdir(parents=True)
    with open(prep / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_json_atomic(prep / "manifest.json", {"stage": "prepare", "status": "succeeded", "outputsDigest": "bench"})
    efr = parse_document({"metadata": {"name": "tput"}, "spec": {
        "baseModel": {"maxSeqLength": args.max_seq_length},
        "training": {"batchSize": args.batch_size, "negatives": args.negatives, "maxSteps": steps, "epochs": 1,
                     "warmupRatio": 0.0}}})
    os.environ["EFT_DEVICE"] = device
    m = execute_stage(efr, Workspace(root), "train", progress=lambda msg: None)
    cache = m["details"].get("tokenCache") or {}
    rows = steps * args.batch_size
    if cache.get("enabled"):
        print(f"    eft token cache: {cache['texts']} distinct texts for {cache['textSlots']} uses, "
              f"{cache['tokens']} tokens, built once in {cache['seconds']}s (not in the step time; "
              f"with it: {rows / (rows / m['counts']['rows_per_second'] + cache['seconds']):.1f} rows/s)")
    return float(m["counts"]["rows_per_second"])


def st_rows_per_second(rows, args, steps: int, device: str) -> float:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import TrainerCallback

    from eft.models import load_sentence_model
    from eft.spec import BaseModelSpec

    model = load_sentence_model(BaseModelSpec(max_seq_length=args.max_seq_length), device=device)
    cols = {"anchor": [r["query"] for r in rows], "positive": [r["positive"]["text"] for r in rows]}
    for j in range(args.negatives):
        cols[f"negative_{j + 1}"] = [r["negatives"][j]["text"] for r in rows]
    ds = Dataset.from_dict(cols)
    times = {}

    class Clock(TrainerCallback):
        def _sync(self):
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def on_train_begin(self, *a, **k):
            self._sync()
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            self._sync()
            times["end"] = time.perf_counter()

    out = tempfile.mkdtemp(prefix="st-tput-")
    targs = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=steps, learning_rate=1e-5,
        warmup_steps=0, weight_decay=0.01, disable_tqdm=True, bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(),
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", logging_steps=10**6, report_to="none",
        dataloader_drop_last=True, use_cpu=not device.startswith("cuda"), seed=42)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=50.0), callbacks=[Clock()])
    trainer.train()
    return steps * args.batch_size / (times["end"] - times["start"])


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="BEIR folder with qrels/train.tsv (or test.tsv)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 on GPU, 16 on CPU")
    ap.add_argument("--negatives", type=int, default=None, help="hard negatives per row; default 4 on GPU, 1 on CPU")
    ap.add_argument("--max-seq-length", type=int, default=None, help="default 256 on GPU, 128 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 40 on GPU, 6 on CPU")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first; default 5 on GPU, 1 on CPU")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    ap.add_argument("--also-without-cache", action="store_true",
                    help="also time the train stage with its token cache off (EFT_TOKEN_CACHE=0: per-batch tokenization)")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.negatives = args.negatives if args.negatives is not None else (4 if gpu else 1)
    args.max_seq_length = args.max_seq_length or (256 if gpu else 128)
    args.steps = args.steps or (40 if gpu else 6)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (5 if gpu else 1)
    if not gpu:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Both contenders may use every core to tokenize (the train stage does so on GPU).
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if gpu else "false"

    n_rows = args.batch_size * (args.steps + args.warmup_steps) + args.batch_size
    rows = build_rows(args.dataset, n_rows, args.negatives, seed=0)
    dev = torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"train throughput on {args.dataset.name}: {len(rows)} rows, batch {args.batch_size}, "
          f"{args.negatives} hard negative(s) + in-batch, max_seq_length {args.max_seq_length}, device {dev}")
    print(f"each: {args.warmup_steps} warm-up step(s) then {args.steps} timed steps, same process", flush=True)

    eft_rps = st_rps = None
    for phase, steps in (("warm-up", args.warmup_steps), ("timed", args.steps)):
        if steps <= 0:
            continue
        e = eft_rows_per_second(rows, args, steps, args.device)
        s = st_rows_per_second(rows, args, steps, args.device)
        print(f"  {phase:8s} eft {e:8.1f} rows/s   SentenceTransformerTrainer {s:8.1f} rows/s", flush=True)
        eft_rps, st_rps = e, s
    if args.also_without_cache:
        os.environ["EFT_TOKEN_CACHE"] = "0"
        nc = eft_rows_per_second(rows, args, args.steps, args.device)
        os.environ.pop("EFT_TOKEN_CACHE")
        print(f"  timed    eft without token cache {nc:8.1f} rows/s (cache speed-up {eft_rps / nc:.2f}x)", flush=True)
    print(f"eft train stage:             {eft_rps:.1f} rows/s")
    print(f"SentenceTransformerTrainer:  {st_rps:.1f} rows/s")
    print(f"ratio eft / sentence-transformers: {eft_rps / st_rps:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
