"""Where one training step of the train stage spends its time: batch features, host-to-device copy,
forward + loss, backward, optimizer; measured phase by phase (synchronised) on the stage's own functions.

    python bench/train_step_breakdown.py ../shared/datasets/nfcorpus [--device cuda] [--batch-size 128]
        [--negatives 4] [--max-seq-length 256] [--steps 20] [--profile] [--compile] [--cache-only]

Prints the median milliseconds per phase with features from the token cache and from per-batch
tokenization, the rows/s each implies, and with --profile the operators that took the most device time.
--compile runs the steps through the stage's torch.compile handle (compiled during the warm-up steps).
Batches are padded as the stage pads them on a GPU (multiples of 32 tokens).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    import torch

    from train_throughput import build_rows

    from eft.models import load_sentence_model
    from eft.spec import BaseModelSpec
    from eft.stages.train.batches import GPU_PAD_MULTIPLE, BatchTensors
    from eft.stages.train.compiled_forward import TrainForward
    from eft.stages.train.distributed import DistInfo
    from eft.stages.train.loss import LossConfig, batch_loss
    from eft.stages.train.modeling import to_device
    from eft.stages.train.rows import TrainRow
    from eft.stages.train.token_cache import build_token_cache

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compile", action="store_true", help="steps through torch.compile (as training.compile)")
    ap.add_argument("--cache-only", action="store_true", help="skip the per-batch tokenization variant")
    args = ap.parse_args(argv)
    dev = args.device
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gpu = dev.startswith("cuda")

    def sync():
        if gpu:
            torch.cuda.synchronize()

    n_rows = args.batch_size * (args.steps + 5)
    raw = build_rows(args.dataset, n_rows, args.negatives, seed=0)
    rows = [TrainRow(r["qid"], r["query"], r["positive"]["_id"], r["positive"]["text"],
                     [x["_id"] for x in r["negatives"]], [x["text"] for x in r["negatives"]]) for r in raw]
    model = load_sentence_model(BaseModelSpec(max_seq_length=args.max_seq_length), device=dev)
    inner = model[0].auto_model
    print(f"device {torch.cuda.get_device_name(0) if gpu else 'cpu'}, attention "
          f"{getattr(inner.config, '_attn_implementation', '?')}, {len(rows)} rows, batch {args.batch_size}, "
          f"{args.negatives} negatives, max_seq_length {args.max_seq_length}", flush=True)
    t0 = time.perf_counter()
    cache = build_token_cache(model, [r.query for r in rows] + [t for r in rows for t in (r.pos_text, *r.neg_texts)])
    if cache is not None and gpu:
        cache.pad_multiple = GPU_PAD_MULTIPLE
    print(f"token cache built in {time.perf_counter() - t0:.2f}s: {len(cache) if cache else 'off'} texts", flush=True)
    cfg = LossConfig(scale=50.0, n_neg=args.negatives, in_batch=True,
                     known_pairs=torch.zeros(0, dtype=torch.long), n_ids=1)
    info = DistInfo(device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=gpu or None)
    model.train()
    fwd = TrainForward(model, args.compile, "bench")

    def batch(i: int, use_cache: bool):
        sel = rows[i * args.batch_size:(i + 1) * args.batch_size]
        qs = [r.query for r in sel]
        ps = [r.pos_text for r in sel] + [t for r in sel for t in r.neg_texts]
        feats = (cache.features(qs), cache.features(ps)) if use_cache else (model.preprocess(qs), model.preprocess(ps))
        return BatchTensors(queries=qs, passages=ps, row_q=torch.arange(len(sel)),
                            pids=torch.arange(len(ps)) + 10**6, features=feats)

    def run(use_cache: bool, steps: int) -> dict[str, list[float]]:
        phases: dict[str, list[float]] = {k: [] for k in ("features", "copy", "forward+loss", "backward", "optimizer")}
        for i in range(steps):
            sync(); a = time.perf_counter()
            b = batch(i % (len(rows) // args.batch_size), use_cache)
            bt = time.perf_counter()
            qf, pf = to_device(b.features[0], dev), to_device(b.features[1], dev)
            b.features = (qf, pf)
            sync(); c = time.perf_counter()
            loss = batch_loss(model, b, cfg, info, forward=fwd.forward)
            sync(); d = time.perf_counter()
            loss.backward()
            sync(); e = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(); opt.zero_grad(set_to_none=True)
            sync(); f = time.perf_counter()
            for k, v in zip(phases, (bt - a, c - bt, d - c, e - d, f - e)):
                phases[k].append(v * 1000)
        return phases

    t0 = time.perf_counter()
    run(True, 5)  # warm-up: kernels, allocator, compiling
    print(f"warm-up (5 steps{', compiling included' if args.compile else ''}): {time.perf_counter() - t0:.1f}s", flush=True)
    for use_cache in ((True,) if args.cache_only else (True, False)):
        ph = run(use_cache, args.steps)
        med = {k: statistics.median(v) for k, v in ph.items()}
        total = sum(med.values())
        print(f"\n{'token cache' if use_cache else 'per-batch tokenization'}: median ms per step over {args.steps} steps")
        for k, v in med.items():
            print(f"  {k:14s} {v:8.1f}")
        print(f"  {'total':14s} {total:8.1f}  -> {args.batch_size / total * 1000:.0f} rows/s if nothing overlaps; "
              f"{args.batch_size / (total - med['features']) * 1000:.0f} rows/s with features prepared ahead", flush=True)
    if args.profile and gpu:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(True, 3)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
