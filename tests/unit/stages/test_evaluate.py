"""The evaluate stage: metric values against a hand computation, exact search, the quality gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from eft.stages import evaluate

from eft import metrics
from eft.pipeline import StageFailed, execute_stage
from eft.spec import GateSpec, parse_document
from eft.stage_reports import EvaluateReport
from eft.workspace import Workspace, write_json_atomic

# ------------------------------------------------------------------------------------ hand computation

QRELS = {
    "q1": {"d1": 2, "d3": 1, "d6": 1},
    "q2": {"d2": 1},
    "q3": {"d4": 1, "d5": 1, "d9": 0},  # d9 judged not relevant
    "q4": {"d7": 1},  # retrieved nothing at all
}
RANKINGS = {
    "q1": ["d3", "d2", "d1", "d4", "d5", "d6"],
    "q2": ["d1", "d4", "d5", "d2", "d3"],
    "q3": ["d5", "d9", "d1", "d4"],
}


def hand_metrics(k: int) -> dict[str, float]:
    """nDCG@k (linear gains, ideal from all judgements), Recall@k, MAP@k (map_cut: AP truncated at k over
    all relevant documents), P@k (divided by k), averaged over every judged query."""
    out = {"ndcg": 0.0, "recall": 0.0, "map": 0.0, "precision": 0.0}
    for q, rels in QRELS.items():
        ranked = RANKINGS.get(q, [])[:k]
        relevant = {d for d, g in rels.items() if g > 0}
        dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sorted(rels.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        hits = [d in relevant for d in ranked]
        ap = sum(sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h) / len(relevant)
        out["ndcg"] += dcg / idcg
        out["recall"] += sum(hits) / len(relevant)
        out["map"] += ap
        out["precision"] += sum(hits) / k
    return {f"{m}@{k}": v / len(QRELS) for m, v in out.items()}


def test_metrics_match_a_hand_computation():
    results = {q: {d: 1.0 - 0.1 * i for i, d in enumerate(r)} for q, r in RANKINGS.items()}
    got = metrics.score(QRELS, results, [1, 3, 5])
    for k in (1, 3, 5):
        for name, value in hand_metrics(k).items():
            assert got[name] == pytest.approx(value, abs=1e-5), name
    # Spot-check one value fully by hand: q1 nDCG@3 = (1/1 + 0 + 2/2) / (2/1 + 1/log2(3) + 1/2).
    q1 = (1 + 2 / 2) / (2 + 1 / math.log2(3) + 1 / 2)
    others = (1 / math.log2(5) / 1) * 0  # q2's hit is at rank 4: outside @3
    q3 = (1 / 1) / (1 + 1 / math.log2(3))
    assert got["ndcg@3"] == pytest.approx((q1 + others + q3 + 0) / 4, abs=1e-5)
    assert list(got)[:3] == ["ndcg@1", "ndcg@3", "ndcg@5"]


def test_search_is_exact_top_k():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(500, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    scores, idx = metrics.search(q, c, 10)
    truth = np.argsort(-(q @ c.T), axis=1)[:, :10]
    assert (idx == truth).all()
    assert np.allclose(scores, np.take_along_axis(q @ c.T, truth, 1), atol=1e-5)
    assert metrics.search(q, c[:4], 10)[1].shape == (7, 4)


def test_gate_arithmetic_and_message():
    res = {"test": {"base": {"ndcg@10": 0.317}, "tuned": {"ndcg@10": 0.301}}}
    g = evaluate.compute_gate(res, "test", GateSpec())
    assert g["status"] == "failed" and g["relativeChange"] == pytest.approx(-0.0505, abs=1e-3)
    assert evaluate.gate_failure_message(g).startswith(
        "quality gate failed: ndcg@10 on test: tuned 0.301 < base 0.317 (-5.0%, required >= +0.0%); "
        "set evaluation.gate.override: true to ship anyway")
    same = {"test": {"base": {"ndcg@10": 0.3}, "tuned": {"ndcg@10": 0.3}}}
    assert evaluate.compute_gate(same, "test", GateSpec())["status"] == "passed"
    assert evaluate.compute_gate(same, "test", GateSpec(min_relative_improvement=0.05))["status"] == "failed"
    assert evaluate.compute_gate(res, "test", GateSpec(override=True))["status"] == "overridden"


# ------------------------------------------------------------------------------------ the stage

DOCS = {
    "d-paris": "The Eiffel Tower stands in Paris, the capital of France.",
    "d-rome": "The Colosseum is an ancient amphitheatre in the centre of Rome.",
    "d-tokyo": "Tokyo Skytree is a broadcasting tower in Sumida, Tokyo.",
    "d-nile": "The Nile is the longest river in Africa and flows into the Mediterranean.",
    "d-amazon": "The Amazon rainforest covers much of the Amazon basin in South America.",
    "d-everest": "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    "d-coffee": "Coffee is brewed from roasted coffee beans, the seeds of berries from Coffea plants.",
    "d-tea": "Green tea is made from Camellia sinensis leaves that have not been oxidised.",
    "d-piano": "The piano is a keyboard instrument in which hammers strike strings.",
    "d-violin": "The violin is a wooden string instrument played with a bow.",
}
QUERIES = {
    "t1": ("where is the eiffel tower", "d-paris"),
    "t2": ("which is the longest river in africa", "d-nile"),
    "t3": ("what is the highest mountain on earth", "d-everest"),
    "t4": ("how is coffee made", "d-coffee"),
    "t5": ("instrument with hammers and strings", "d-piano"),
    "t6": ("ancient amphitheatre in rome", "d-rome"),
}


def write_beir(d: Path, queries: dict, split: str = "test") -> None:
    (d / "qrels").mkdir(parents=True)
    with open(d / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS.items())
    with open(d / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in queries.items())
    with open(d / "qrels" / f"{split}.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{doc}\t1\n" for q, (_, doc) in queries.items())


def write_manifest(d: Path, stage: str) -> None:
    write_json_atomic(d / "manifest.json", {"stage": stage, "status": "succeeded", "outputsDigest": stage})


@pytest.fixture(scope="module")
def workspace_with_worse_model(tmp_path_factory):
    """prepare/beir with a test split, and a train/model that is the base model with its token
    embeddings scrambled: certainly worse than the base model."""
    import torch

    from eft.models import load_sentence_model

    root = tmp_path_factory.mktemp("ws")
    write_beir(root / "prepare" / "beir", dict(list(QUERIES.items())[:4]))
    # prepare's count of test positives seen in training (one of the four, as a question split may leave)
    seen = {"questions": 4, "questionsWithSeenPositive": 1, "positives": 4, "positivesSeenInTraining": 1}
    quotes = {"sentences": 3, "passages": 2, "keptWhole": 1, "wordExtractsLeftOut": 5}
    docs = {"questions": 4, "questionsWithSeenDocument": 2, "documents": 3, "documentsSeenInTraining": 1}
    write_json_atomic(root / "prepare" / "manifest.json", {"stage": "prepare", "status": "succeeded",
                                                           "outputsDigest": "prepare",
                                                           "details": {"split": {"seenInTraining": {"test": seen},
                                                                                 "documentsSeenInTraining": {"test": docs},
                                                                                 "quotesRemoved": quotes}}})
    model = load_sentence_model(device="cpu")
    emb = model[0].auto_model.get_input_embeddings().weight
    with torch.no_grad():
        emb.copy_(emb[torch.randperm(emb.shape[0], generator=torch.Generator().manual_seed(0))])
    model.save(str(root / "train" / "model"), create_model_card=False)
    write_manifest(root / "train", "train")
    write_beir(root / "human", QUERIES)
    return Workspace(root)


def spec_with(ws: Workspace, **gate):
    return parse_document({"metadata": {"name": "e"}, "spec": {"evaluation": {
        "k": [1, 10], "gate": gate, "datasets": [{"name": "human", "path": str(ws.root / "human")}]}}})


def test_gate_blocks_a_worse_model_and_override_ships_it(workspace_with_worse_model):
    ws = workspace_with_worse_model
    # The gate is a verdict: the stage succeeds (a pod exits 0, its Job does not retry) and reports it.
    progress: list[str] = []
    m = execute_stage(spec_with(ws), ws, "evaluate", progress=progress.append)
    report = EvaluateReport.parse(m["summary"])
    # Gated on the first extra (human-labelled) dataset, not on the synthetic split.
    assert report.gate == "failed" and report.gate_dataset == "human" and report.blocks_shipping()
    assert report.tuned_ndcg10 < report.base_ndcg10 and report.relative_improvement < 0
    msg = next(p for p in progress if p.startswith("quality gate failed"))
    assert msg.startswith("quality gate failed: ndcg@10 on human: tuned ")
    assert " < base " in msg and "set evaluation.gate.override: true" in msg and "\n" not in msg
    kept = json.loads((ws.stage_dir("evaluate") / "metrics.json").read_text())
    assert kept["gate"]["status"] == "failed"
    # ... and the export stage refuses the model, whoever runs it
    with pytest.raises(StageFailed) as e:
        execute_stage(spec_with(ws), ws, "export")
    assert "quality gate failed" in e.value.message and "evaluation.gate.override: true" in e.value.message
    assert ws.manifest("export") is None

    m = execute_stage(spec_with(ws, override=True), ws, "evaluate")
    out = ws.stage_dir("evaluate")
    data = json.loads((out / "metrics.json").read_text())
    assert set(data) == {"test", "human", "gate", "datasets", "seenInTraining", "quotesRemoved"}
    assert data["quotesRemoved"] == {"sentences": 3, "passages": 2, "keptWhole": 1, "wordExtractsLeftOut": 5}
    assert data["seenInTraining"] == {"questions": 4, "questionsWithSeenPositive": 1, "positives": 4,
                                      "positivesSeenInTraining": 1, "questionsWithSeenDocument": 2, "documents": 3,
                                      "documentsSeenInTraining": 1}
    assert set(data["test"]) == {"base", "tuned"}
    assert set(data["human"]["base"]) == {f"{m_}@{k}" for m_ in ("ndcg", "recall", "map", "precision") for k in (1, 10)}
    g = data["gate"]
    assert g["status"] == "overridden" and g["override"] is True and g["dataset"] == "human"
    assert g["tuned"] < g["base"] and g["base"] == data["human"]["base"]["ndcg@10"]
    assert data["human"]["base"]["ndcg@10"] > 0.8  # the untouched base model finds these easily
    summary = EvaluateReport.parse(m["summary"])
    assert summary.gate == "overridden" and summary.base_ndcg10 == round(g["base"], 4)
    assert not summary.blocks_shipping()
    assert len(m["summary"]) < 1024 and "\n" not in m["summary"]
    assert (out / "metrics.png").stat().st_size > 1000
    table = evaluate.report(out)
    assert "| ndcg@10 |" in table and "### human" in table and "Quality gate overridden" in table
    assert "Test positives seen in training: 1 of 4 passages; 1 of 4 test questions have one" in table
    assert "Their source documents seen in training (another chunk of them a training positive): 1 of 3; 2 of 4" in table
    assert "Quoted sentences removed (split.removeQuotes): 3 from 2 validation and test passages" in table
    assert "1 passages kept whole (too little left); 5 word-extract questions (offline keywords and title) left out" in table
    assert (out / "metrics.md").read_text() in table


def test_the_gate_can_judge_on_the_synthetic_split_while_the_human_set_only_measures(workspace_with_worse_model):
    ws = workspace_with_worse_model
    m = execute_stage(spec_with(ws, dataset="test"), ws, "evaluate")
    report = EvaluateReport.parse(m["summary"])
    data = json.loads((ws.stage_dir("evaluate") / "metrics.json").read_text())
    assert report.gate_dataset == "test" and data["gate"]["dataset"] == "test"
    assert data["gate"]["base"] == data["test"]["base"]["ndcg@10"] and "human" in data


@pytest.fixture(scope="module")
def workspace_with_unchanged_model(tmp_path_factory):
    """A train/model that is the base model saved again (as good as the base on every set), and a prepare whose
    test split is the offline generator's questions alone."""
    from eft.models import load_sentence_model

    root = tmp_path_factory.mktemp("ws")
    write_beir(root / "prepare" / "beir", dict(list(QUERIES.items())[:4]))
    load_sentence_model(device="cpu").save(str(root / "train" / "model"), create_model_card=False)
    write_beir(root / "human", QUERIES)
    return Workspace(root)


def set_sources(ws: Workspace, test_sources: dict, shipped: str = "last") -> None:
    write_json_atomic(ws.root / "prepare" / "manifest.json", {
        "stage": "prepare", "status": "succeeded", "outputsDigest": "prepare",
        "details": {"split": {"questionSources": {"train": {"offline": 9}, "dev": {"offline": 2}, "test": test_sources}}}})
    write_json_atomic(ws.root / "train" / "manifest.json", {"stage": "train", "status": "succeeded",
                                                            "outputsDigest": f"train-{shipped}",
                                                            "details": {"shipped": shipped}})


def test_a_synthetic_split_of_offline_questions_alone_is_no_evidence(workspace_with_unchanged_model):
    ws = workspace_with_unchanged_model
    set_sources(ws, {"offline": 4})
    progress: list[str] = []
    m = execute_stage(spec_with(ws, dataset="test"), ws, "evaluate", progress=progress.append)
    report = EvaluateReport.parse(m["summary"])
    g = json.loads((ws.stage_dir("evaluate") / "metrics.json").read_text())["gate"]
    # not worse (the same weights), yet not passed: the split cannot tell
    assert g["tuned"] == pytest.approx(g["base"]) and g["relativeChange"] == pytest.approx(0, abs=1e-6)
    assert g["status"] == "failed" and g["unverifiable"] == "offlineQuestionsOnly" and not g["passed"]
    assert report.gate == "failed" and report.gate_reason == "offlineQuestionsOnly" and report.blocks_shipping()
    msg = next(p for p in progress if p.startswith("quality gate failed"))
    assert "not accepted as evidence: every synthetic test question was cut from its passage by the offline generator" in msg
    assert "set evaluation.gate.override: true to ship anyway" in msg
    assert "offline generator" in evaluate.report(ws.stage_dir("evaluate"))
    with pytest.raises(StageFailed, match="quality gate failed") as refused:
        execute_stage(spec_with(ws, dataset="test"), ws, "export")
    assert "not accepted as evidence: every synthetic test question was cut" in refused.value.message

    # the override ships it and still says why the gate did not pass
    report = EvaluateReport.parse(execute_stage(spec_with(ws, dataset="test", override=True), ws, "evaluate")["summary"])
    assert report.gate == "overridden" and report.gate_reason == "offlineQuestionsOnly" and not report.blocks_shipping()
    # human labels decide where there are some (the default gate dataset)
    report = EvaluateReport.parse(execute_stage(spec_with(ws), ws, "evaluate")["summary"])
    assert report.gate == "passed" and report.gate_dataset == "human" and report.gate_reason is None


@pytest.mark.parametrize("sources,shipped", [({"offline": 2, "openai": 2}, "last"), ({"supplied": 4}, "last"),
                                             ({"offline": 4}, "base")])
def test_the_gate_judges_written_questions_and_passes_the_base_weights(workspace_with_unchanged_model, sources, shipped):
    """Questions an LLM or a person wrote are evidence; and when train shipped the base weights there is
    nothing to verify (the pipeline ends at the base model)."""
    ws = workspace_with_unchanged_model
    set_sources(ws, sources, shipped)
    report = EvaluateReport.parse(execute_stage(spec_with(ws, dataset="test"), ws, "evaluate")["summary"])
    assert report.gate == "passed" and report.gate_reason is None


def test_unverifiable_reason():
    offline = {"offline"}
    assert evaluate.unverifiable_reason("test", offline, "last") == "offlineQuestionsOnly"
    assert evaluate.unverifiable_reason("test", offline, "epoch 2") == "offlineQuestionsOnly"
    assert evaluate.unverifiable_reason("test", offline, "base") is None
    assert evaluate.unverifiable_reason("human", offline, "last") is None
    assert evaluate.unverifiable_reason("test", {"offline", "openai"}, "last") is None
    assert evaluate.unverifiable_reason("test", set(), "last") is None
    g = evaluate.compute_gate({"test": {"base": {"ndcg@10": 0.5}, "tuned": {"ndcg@10": 0.6}}}, "test", GateSpec(),
                              "offlineQuestionsOnly")
    assert g["status"] == "failed" and g["relativeChange"] == pytest.approx(0.2)


def test_test_sources_from_prepare_or_for_an_older_prepare_from_the_spec():
    default = parse_document({})  # the offline generator, no supplied queries
    counted = {"questionSources": {"test": {"offline": 3, "supplied": 2}}}
    assert evaluate.test_sources(counted, default.spec) == {"offline", "supplied"}
    assert evaluate.test_sources({}, default.spec) == {"offline"}
    supplied = parse_document({"queries": {"path": "q.jsonl", "use": "withGenerated"}}).spec
    llm = parse_document({"sdg": {"backend": "openai", "openai": {"baseURL": "http://llm:8000/v1", "model": "m"}}}).spec
    assert evaluate.test_sources({}, supplied) == set() and evaluate.test_sources({}, llm) == set()


def test_without_a_synthetic_test_split_the_human_set_alone_is_measured_and_gates(tmp_path):
    """split.test resolved to 0 (the gate reads a human-labelled dataset): prepare writes an empty test split."""
    from eft.models import load_sentence_model

    ws = Workspace(tmp_path)
    write_beir(tmp_path / "prepare" / "beir", {})
    write_manifest(tmp_path / "prepare", "prepare")
    load_sentence_model(device="cpu").save(str(tmp_path / "train" / "model"), create_model_card=False)
    write_manifest(tmp_path / "train", "train")
    write_beir(tmp_path / "human", QUERIES)
    efr = spec_with(ws)
    assert efr.spec.test_fraction == 0.0
    m = execute_stage(efr, ws, "evaluate")
    data = json.loads((ws.stage_dir("evaluate") / "metrics.json").read_text())
    assert set(data) == {"human", "gate", "datasets"} and data["gate"]["dataset"] == "human"
    assert m["counts"]["queries"] == len(QUERIES) and EvaluateReport.parse(m["summary"]).gate == "passed"
    md = evaluate.report(ws.stage_dir("evaluate"))
    assert "No synthetic test split: split.test resolved to 0" in md and "### test" not in md
    # a gate named on the synthetic split that prepare did not make is a clear failure, not a KeyError
    with pytest.raises(StageFailed, match="the gate is judged on 'test', which prepare did not make"):
        execute_stage(spec_with(ws, dataset="test"), ws, "evaluate")


def test_bad_input_fails_with_one_line(tmp_path):
    ws = Workspace(tmp_path)
    write_beir(tmp_path / "prepare" / "beir", {})
    write_manifest(tmp_path / "prepare", "prepare")
    (tmp_path / "train" / "model").mkdir(parents=True)
    write_manifest(tmp_path / "train", "train")
    efr = parse_document({})
    with pytest.raises(StageFailed, match="not a model folder"):
        execute_stage(efr, ws, "evaluate")
    (tmp_path / "train" / "model" / "modules.json").write_text("[]")
    with pytest.raises(StageFailed, match="nothing to evaluate on: prepare made no synthetic test split"):
        execute_stage(efr, ws, "evaluate")
    with open(tmp_path / "prepare" / "beir" / "qrels" / "test.tsv", "a") as f:
        f.write("t9\td-paris\t1\n")  # a judgement of a query queries.jsonl lacks
    with pytest.raises(StageFailed, match="synthetic test split: .*names 1 queries missing from queries.jsonl"):
        execute_stage(efr, ws, "evaluate")


def test_the_report_shows_the_training_search_with_its_choice():
    search = {"trials": [{"learningRate": 1e-5, "temperature": 0.02, "steps": 40, "valNdcg10": 0.61, "seconds": 12.0},
                         {"learningRate": 5e-5, "temperature": 0.05, "steps": 40, "valNdcg10": 0.66, "seconds": 11.5}],
              "trialFraction": 0.25, "chosen": {"learningRate": 5e-5, "temperature": 0.05}, "seconds": 23.5}
    md = evaluate.render_markdown({"trainingSearch": search})
    assert "### training search (2 trials of 0.25 of the run's steps, 24 s)" in md
    assert "| 1e-05 | 0.02 | 40 | 0.6100 | 12 |" in md and "| 5e-05 | 0.05 (chosen) | 40 | 0.6600 | 12 |" in md
