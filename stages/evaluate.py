"""evaluate stage: the base model against the tuned model (train/model), and the quality gate.

Datasets, each evaluated with exact cosine search over the whole corpus (nothing excluded) and scored
with beir's EvaluateRetrieval.evaluate (pytrec_eval) at ``evaluation.k``: nDCG, Recall, MAP, P.

- ``test``: the workspace's held-out synthetic split (prepare/beir, qrels/test.tsv).
- every ``evaluation.datasets`` entry: a BEIR folder with human-written queries and judgements, the
  honest measure of what fine-tuning did (beir's convention of ignoring a retrieved document whose id
  equals the query id applies to these, as in published BEIR numbers; not to the synthetic split).

Quality gate (``evaluation.gate``): measured on ``gate.dataset``; by default the FIRST extra dataset when
there is one (human labels are the measure that matters and are not produced by the pipeline that trained
the model), otherwise on the synthetic test split. It passes when (tuned - base) / base >= minRelativeImprovement
(default 0: tuned must not be worse) and the dataset can tell: a synthetic test split of the offline generator's
questions alone cannot (unverifiable_reason), so a gate judged on it fails unless train shipped the base weights
(the README's Benchmarks show why). The gate is a verdict, not a failure of the stage: evaluate
succeeds either way (a pod exits 0, so a Job never retries a measurement), writes its outputs and
reports the verdict (eft.stage_reports.EvaluateReport); whoever runs the pipeline then stops before
export when the report blocks shipping, and the export stage itself refuses such a model.

Outputs: metrics.json ({"test": {"base": {...}, "tuned": {...}}, "<dataset>": {...}, "gate": {...},
"seenInTraining": how many synthetic test positives, and their source documents, were training positives (or
from training positives' documents), from prepare's split}),
metrics.md (base vs tuned vs delta per dataset) and metrics.png (bar chart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eft.pipeline import StageContext, StageFailed
from eft.spec import RESERVED_DATASET_NAMES
from eft.stage_reports import EvaluateReport, gate_reason_suffix
from eft.workspace import StageResult, read_json, write_json_atomic

log = logging.getLogger("eft.evaluate")

TEST = "test"
RESERVED = set(RESERVED_DATASET_NAMES)  # the other keys of metrics.json


@dataclass
class EvalSet:
    name: str
    description: str
    data: Any  # eft.metrics.BeirData
    ignore_identical_ids: bool


def _fail(msg: str) -> StageFailed:
    return StageFailed("evaluate", msg)


def load_eval_sets(prepare_dir: Path, datasets) -> list[EvalSet]:
    """The synthetic test split (when prepare made one: split.test resolved to 0 makes none) and every dataset."""
    from eft import metrics

    sets = []
    if metrics.has_split(prepare_dir / "beir", TEST):
        try:
            data = metrics.load_beir(prepare_dir / "beir", TEST)
        except metrics.DatasetError as exc:
            raise _fail(f"synthetic test split: {exc}") from None
        sets.append(EvalSet(TEST, "synthetic held-out split", data, False))
    for ds in datasets:
        if ds.name in RESERVED:
            raise _fail(f"evaluation.datasets name '{ds.name}' is reserved; choose another name")
        if "://" in ds.path:
            raise _fail(f"evaluation dataset '{ds.name}': only local folders are supported, got {ds.path}")
        try:
            data = metrics.load_beir(ds.path, ds.split)
        except metrics.DatasetError as exc:
            raise _fail(f"evaluation dataset '{ds.name}': {exc}") from None
        sets.append(EvalSet(ds.name, f"human-labelled, split {ds.split}", data, True))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise _fail(f"evaluation.datasets names must be unique, got {names}")
    if not sets:
        raise _fail("nothing to evaluate on: prepare made no synthetic test split (split.test 0) and "
                    "evaluation.datasets is empty")
    return sets


def evaluate_model(model, sets: list[EvalSet], k_values: list[int], qprefix: str, pprefix: str,
                   progress=lambda m: None, label: str = "") -> dict[str, dict[str, float]]:
    """Metrics of one model on every eval set; corpora shared by several sets are embedded once."""
    from eft import metrics

    cache: dict[str, Any] = {}
    out = {}
    for s in sets:
        ids = list(s.data.corpus)
        key = hashlib.sha256(json.dumps([[d, metrics.doc_text(s.data.corpus[d])] for d in ids]).encode()).hexdigest()
        progress(f"{label}: {s.name} ({len(s.data.queries)} queries, {len(ids)} documents)")
        r = metrics.retrieve(model, s.data, max(k_values), qprefix, pprefix, corpus_emb=cache.get(key))
        cache[key] = r.corpus_emb
        out[s.name] = metrics.score(s.data.qrels, r.results, k_values, ignore_identical_ids=s.ignore_identical_ids)
    return out


def test_sources(split: dict[str, Any], spec) -> set[str]:
    """Who wrote the synthetic test questions (sdg backends): prepare's count (split.questionSources); for a
    prepare from before that count, what the spec implies (the offline generator and no supplied queries)."""
    counted = split.get("questionSources")
    if counted is not None:
        return set(counted.get(TEST) or {})
    return {"offline"} if spec.sdg.backend == "offline" and not spec.queries.path else set()


def unverifiable_reason(dataset: str, sources: set[str], shipped: str | None) -> str | None:
    """Why the gate's dataset cannot show that the tuned model is better (a key of GATE_REASONS), or None.

    A synthetic test split holding only the offline generator's questions (`sources`, test_sources) is no
    evidence: those questions are cut from their passages, and such a split called a model better that human
    queries called worse (README, Benchmarks). Mixed, LLM-written or supplied questions are judged as before.
    When train shipped the base weights (no epoch beat them on validation) the "tuned" model is the base model,
    and there is nothing to verify."""
    if dataset != TEST or shipped == "base":
        return None
    return "offlineQuestionsOnly" if sources == {"offline"} else None


def compute_gate(results: dict[str, dict[str, dict[str, float]]], dataset: str, gate,
                 unverifiable: str | None = None) -> dict[str, Any]:
    """The gate's verdict; `unverifiable` (unverifiable_reason) fails it whatever the metric says."""
    from eft.metrics import relative_change

    base = results[dataset]["base"][gate.metric]
    tuned = results[dataset]["tuned"][gate.metric]
    rel = relative_change(base, tuned)
    passed = rel >= gate.min_relative_improvement - 1e-12 and unverifiable is None
    status = "passed" if passed else ("overridden" if gate.override else "failed")
    return {
        "dataset": dataset,
        "metric": gate.metric,
        "base": base,
        "tuned": tuned,
        "relativeChange": None if math.isinf(rel) else round(rel, 6),
        "required": gate.min_relative_improvement,
        "passed": passed,
        "override": gate.override,
        "status": status,
        "unverifiable": unverifiable,
    }


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def gate_line(g: dict[str, Any]) -> str:
    op = "<" if g["tuned"] < g["base"] else ("=" if g["tuned"] == g["base"] else ">")
    line = (f"{g['metric']} on {g['dataset']}: tuned {g['tuned']:.3f} {op} base {g['base']:.3f} "
            f"({_pct(g['relativeChange'])}, required >= {_pct(g['required'])})")
    return line + gate_reason_suffix(g.get("unverifiable"))


def gate_failure_message(g: dict[str, Any]) -> str:
    return (f"quality gate failed: {gate_line(g)}; set evaluation.gate.override: true to ship anyway "
            "(metrics in evaluate/metrics.md)")


def dataset_names(m: dict[str, Any]) -> list[str]:
    """The dataset entries of metrics.json (every key but 'gate' and 'datasets'): the synthetic test split
    first, then the others by name (metrics.json is written with sorted keys; this keeps one order)."""
    names = sorted(n for n, v in m.items() if n not in ("gate", "datasets") and isinstance(v, dict) and "base" in v)
    return sorted(names, key=lambda n: n != TEST)


def render_markdown(m: dict[str, Any]) -> str:
    from eft.metrics import order_metrics, relative_change

    lines = []
    info = m.get("datasets", {})
    names = dataset_names(m)
    if names and TEST not in names:
        lines += ["No synthetic test split: split.test resolved to 0, since the gate reads a human-labelled dataset "
                  "(those questions trained instead).", ""]
    for name in names:
        res = m[name]
        d = info.get(name, {})
        desc = f" ({d.get('description')}: {d.get('queries')} queries, {d.get('documents')} documents)" if d else ""
        lines += [f"### {name}{desc}", "", "| metric | base | tuned | delta |", "|---|---:|---:|---:|"]
        for metric, b in order_metrics(res["base"]).items():
            t = res["tuned"].get(metric)
            if t is None:
                continue
            rel = relative_change(b, t)
            lines.append(f"| {metric} | {b:.4f} | {t:.4f} | {'n/a' if math.isinf(rel) else f'{rel * 100:+.1f}%'} |")
        lines.append("")
        if name == TEST and m.get("seenInTraining"):
            lines += [seen_line(m["seenInTraining"]), ""]
        if name == TEST and m.get("quotesRemoved"):
            lines += [quotes_line(m["quotesRemoved"]), ""]
    if m.get("trainingSearch"):
        lines += search_table(m["trainingSearch"]) + [""]
    g = m.get("gate")
    if g:
        extra = " (override: shipped anyway)" if g["status"] == "overridden" else ""
        lines.append(f"**Quality gate {g['status']}**{extra}: {gate_line(g)}")
    return "\n".join(lines).rstrip() + "\n"


def search_table(search: dict[str, Any]) -> list[str]:
    """The training search's trials (train manifest), the chosen one marked."""
    chosen = search["chosen"]
    out = [f"### training search ({len(search['trials'])} trials of {search['trialFraction']:g} of the run's steps, "
           f"{search['seconds']:.0f} s)", "", "| learning rate | temperature | steps | validation nDCG@10 | s |",
           "|---:|---:|---:|---:|---:|"]
    for t in search["trials"]:
        mark = " (chosen)" if {"learningRate": t["learningRate"], "temperature": t["temperature"]} == chosen else ""
        score = "n/a" if t["valNdcg10"] is None else f"{t['valNdcg10']:.4f}"
        out.append(f"| {t['learningRate']:g} | {t['temperature']:g}{mark} | {t['steps']} | {score} | {t['seconds']:.0f} |")
    return out


def seen_line(seen: dict[str, int]) -> str:
    warn = "" if not seen["positivesSeenInTraining"] else (
        " (the test split partly measures what training memorised: split.by 'document' or 'chunk' keeps them apart)")
    line = (f"Test positives seen in training: {seen['positivesSeenInTraining']} of {seen['positives']} passages; "
            f"{seen['questionsWithSeenPositive']} of {seen['questions']} test questions have one{warn}.")
    if "documents" in seen:
        line += (f" Their source documents seen in training (another chunk of them a training positive): "
                 f"{seen['documentsSeenInTraining']} of {seen['documents']}; "
                 f"{seen['questionsWithSeenDocument']} of {seen['questions']} test questions have one.")
    return line


def quotes_line(q: dict[str, int]) -> str:
    return (f"Quoted sentences removed (split.removeQuotes): {q['sentences']} from {q['passages']} validation and "
            f"test passages, so questions copied from a passage are matched by the rest of it; "
            f"{q['keptWhole']} passages kept whole (too little left)"
            + (f"; {q['wordExtractsLeftOut']} word-extract questions (offline keywords and title) left out of "
               "validation and test." if q.get("wordExtractsLeftOut") else "."))


def _plot(path: Path, m: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from eft.metrics import order_metrics

    names = dataset_names(m)
    fig, axes = plt.subplots(len(names), 1, figsize=(max(8, 0.6 * len(m[names[0]]["base"]) + 3), 3.2 * len(names)),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        metrics_ = list(order_metrics(m[name]["base"]))
        x = np.arange(len(metrics_))
        ax.bar(x - 0.2, [m[name]["base"][k] for k in metrics_], 0.4, label="base")
        ax.bar(x + 0.2, [m[name]["tuned"][k] for k in metrics_], 0.4, label="tuned")
        ax.set_xticks(x, metrics_, rotation=45, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out: Path, m: dict[str, Any]) -> str:
    write_json_atomic(out / "metrics.json", m)
    md = render_markdown(m)
    (out / "metrics.md").write_text(md, encoding="utf-8")
    try:
        _plot(out / "metrics.png", m)
    except Exception as exc:  # a chart is a nicety; never fail the stage for it
        log.warning("could not draw metrics.png: %s", exc)
    return md


def run(ctx: StageContext) -> StageResult:
    from eft.models import load_sentence_model

    spec = ctx.spec
    ev = spec.evaluation
    bm = spec.base_model
    prep = ctx.input("prepare")
    model_dir = ctx.input("train") / "model"
    if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
        raise _fail(f"train/model is not a model folder ({model_dir}): re-run the train stage")
    sets = load_eval_sets(prep, ev.datasets)
    gate_ds = ev.gate_dataset_name()
    if gate_ds not in {s.name for s in sets}:  # checked before two models are scored
        raise _fail(f"the gate is judged on '{gate_ds}', which prepare did not make (split.test 0): "
                    "re-run prepare with split.test above 0 or judge the gate on an evaluation.datasets entry")
    k_values = list(ev.k)

    results: dict[str, dict[str, dict[str, float]]] = {s.name: {} for s in sets}
    for label, path in (("base", None), ("tuned", str(model_dir))):
        model = load_sentence_model(bm, path=path, device=ctx.settings.device)
        per_set = evaluate_model(model, sets, k_values, bm.query_prefix, bm.passage_prefix, ctx.progress, label)
        for name, mm in per_set.items():
            results[name][label] = mm
        del model

    train_details = ctx.input_manifest("train").get("details") or {}
    # counted where the split is made (prepare/stats.json); None from a prepare that predates the count
    split = (ctx.input_manifest("prepare").get("details") or {}).get("split") or {}
    unverifiable = unverifiable_reason(gate_ds, test_sources(split, spec), train_details.get("shipped"))
    gate = compute_gate(results, gate_ds, ev.gate, unverifiable)
    m: dict[str, Any] = dict(results)
    m["gate"] = gate
    search = train_details.get("search")
    if search:
        m["trainingSearch"] = search
    seen = (split.get("seenInTraining") or {}).get("test")
    if seen is not None and TEST in results:
        m["seenInTraining"] = {**seen, **((split.get("documentsSeenInTraining") or {}).get("test") or {})}
    if split.get("quotesRemoved"):
        m["quotesRemoved"] = split["quotesRemoved"]
    m["datasets"] = {s.name: {"description": s.description, "queries": len(s.data.queries),
                              "documents": len(s.data.corpus), "judgements": s.data.num_judgements} for s in sets}
    md = write_outputs(ctx.out, m)
    ctx.progress(md.strip().splitlines()[-1])
    if gate["status"] == "failed":
        ctx.progress(gate_failure_message(gate))

    report = EvaluateReport(
        base_ndcg10=_round(results[gate_ds]["base"].get("ndcg@10")),
        tuned_ndcg10=_round(results[gate_ds]["tuned"].get("ndcg@10")),
        gate=gate["status"], gate_metric=gate["metric"], gate_dataset=gate_ds,
        gate_base=None if gate["metric"] == "ndcg@10" else round(gate["base"], 4),
        gate_tuned=None if gate["metric"] == "ndcg@10" else round(gate["tuned"], 4),
        relative_improvement=gate["relativeChange"], required=gate["required"], gate_reason=gate["unverifiable"])
    test = results.get(TEST) or {"base": {}, "tuned": {}}
    counts = {
        "queries": len(sets[0].data.queries),  # the synthetic test split's, or the first dataset's without one
        "documents": len(sets[0].data.corpus),
        "datasets": len(sets),
        "base_ndcg@10": _round(results[gate_ds]["base"].get("ndcg@10")),
        "tuned_ndcg@10": _round(results[gate_ds]["tuned"].get("ndcg@10")),
        "gate": gate["status"],
    }
    details = {"gate": gate, "kValues": k_values, "testSeenInTraining": seen, "testNdcg@10": {
        "base": test["base"].get("ndcg@10"), "tuned": test["tuned"].get("ndcg@10")}}
    return StageResult(counts=counts, details=details, summary=report.line())


def report(stage_dir: Path) -> str:
    """The base vs tuned table of a finished evaluate stage (printed by `eft run`)."""
    p = Path(stage_dir) / "metrics.json"
    if not p.is_file():
        return ""
    return "Retrieval quality, base vs tuned\n\n" + render_markdown(read_json(p))
