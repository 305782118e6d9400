"""What the train stage reports in its manifest: counts, details and the one-line summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from eft.stages.train.modeling import precision_name
from eft.workspace import StageResult

if TYPE_CHECKING:
    from eft.stages.train.trainer import Trainer


def stage_result(t: Trainer, *, shipped: str, layout: str) -> StageResult:
    st = t.state
    rows_per_second = st.rows_seen / st.train_seconds if st.train_seconds > 0 else 0.0
    counts = {
        "rows": len(t.data.rows),
        "steps": st.step,
        "epochs": st.epoch,
        "batch_size": t.choice.batch_size,
        "best_epoch": st.best_epoch,
        "best_val_ndcg@10": None if st.best_ndcg is None else round(st.best_ndcg, 4),
        "rows_per_second": round(rows_per_second, 2),
    }
    summary = {"rows": counts["rows"], "steps": st.step, "batchSize": t.choice.batch_size, "bestEpoch": st.best_epoch,
               "bestValNdcg10": counts["best_val_ndcg@10"], "rowsPerSecond": counts["rows_per_second"]}
    return StageResult(counts=counts, details=details(t, shipped=shipped, layout=layout),
                       summary=json.dumps(summary, separators=(",", ":")))


def details(t: Trainer, *, shipped: str, layout: str) -> dict[str, Any]:
    tr, bm, st, info, bs = t.ctx.spec.training, t.ctx.spec.base_model, t.state, t.info, t.choice.batch_size
    base_val = next((c["val_ndcg@10"] for c in st.curve if c["epoch"] == 0 and c["val_ndcg@10"] != ""), None)
    return {
        "modelLayout": layout,
        "batchSize": t.choice.as_dict(),
        "device": info.device,
        "precision": precision_name(info.device),
        "worldSize": info.world_size,
        "globalBatchSize": bs * info.world_size,
        "gradientAccumulation": t.plan.accum,
        "gradientCheckpointing": t.grad_ckpt,
        "compile": t.forward.as_dict(tr.compile),
        "tokenizerWorkers": t.workers,
        "tokenCache": {k: v for k, v in t.token_cache.items() if k != "summary"},
        "preset": tr.preset,
        "plannedEpochs": tr.epochs,
        "maxRowsPerQuestion": tr.max_rows_per_question,
        "rowsPerEpoch": sum(len(b) for b in t.sampler.batches(0)) * info.world_size,
        "negativesPerRow": t.data.n_neg,
        "negativesPadded": t.data.padded,
        "inBatchNegatives": tr.in_batch_negatives,
        "temperature": tr.temperature,
        "learningRate": tr.learning_rate,
        "totalSteps": t.plan.total_steps,
        "warmupSteps": t.plan.warmup,
        "questions": t.data.n_questions,
        "devQueries": 0 if t.dev is None else len(t.dev.queries),
        "baseValNdcg@10": base_val,
        "shipped": shipped,
        "resumedFromStep": t.resumed_from,
        "trainSeconds": round(st.train_seconds, 1),
        "seed": tr.seed,
        "maxSeqLength": bm.max_seq_length,
        "trainMaxSeqLength": t.ctx.spec.training_seq_length(),
    }


def add_search_to_summary(summary: str, search: dict[str, Any]) -> str:
    """The one-line summary with the search's trials, compact (it is also the pod's termination message)."""
    data = json.loads(summary)
    data["search"] = [[t["learningRate"], t["temperature"], t["valNdcg10"]] for t in search["trials"]]
    return json.dumps(data, separators=(",", ":"))
