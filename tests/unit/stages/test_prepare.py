"""prepare: margin arithmetic, multi-positive questions, unrolling, split leakage, fewer-than-N negatives."""

import json

import numpy as np
import pytest
from eft.stages.mining import margin_threshold, mine
from eft.stages.splits import split_by_chunk, split_questions

from eft.pipeline import execute_stage
from eft.spec import parse_document
from eft.workspace import Workspace


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_margin_threshold_with_positive_and_negative_scores():
    assert margin_threshold(0.8, 0.95) == pytest.approx(0.76)
    # A negative weakest-positive score moves the bound further down, never above the positive.
    assert margin_threshold(-0.2, 0.95) == pytest.approx(-0.21)
    assert margin_threshold(0.0, 0.95) == 0.0
    assert margin_threshold(0.8, 1.0) == pytest.approx(0.8)


def scores_to_embeddings(scores):
    """Passages whose inner product with the query e0 equals the given scores."""
    dim = len(scores) + 1
    q = np.zeros(dim, dtype=np.float32)
    q[0] = 1.0
    ps = []
    for i, s in enumerate(scores):
        v = np.zeros(dim, dtype=np.float32)
        v[0] = s
        v[i + 1] = np.sqrt(max(0.0, 1 - s * s))
        ps.append(v)
    return q[None, :], np.stack(ps)


def test_candidates_above_the_margin_are_dropped():
    # positive 0.80 -> bound 0.76: 0.79 and 0.77 are likely unlabelled positives; 0.75, 0.5, 0.3 are safe.
    q, p = scores_to_embeddings([0.80, 0.79, 0.77, 0.75, 0.5, 0.3, 0.1])
    [m] = mine(q, p, [[0]], n_negatives=2, candidates=6, margin=0.95)
    assert m.negatives == [3, 4]
    assert m.filtered == 2
    assert m.threshold == pytest.approx(0.76, abs=1e-5)


def test_negative_scores_are_handled():
    q, p = scores_to_embeddings([-0.20, -0.205, -0.25, -0.5, 0.9])
    # bound = -0.21: -0.205 is too close to the positive; 0.9 (above the positive) is dropped too.
    [m] = mine(q, p, [[0]], n_negatives=2, candidates=4, margin=0.95)
    assert m.negatives == [2, 3]


def test_multi_positive_uses_the_weakest_positive_and_excludes_all_positives():
    q, p = scores_to_embeddings([0.9, 0.6, 0.88, 0.58, 0.56, 0.4, 0.2])
    [m] = mine(q, p, [[0, 1]], n_negatives=2, candidates=5, margin=0.95)
    # Weakest positive 0.6 -> bound 0.57: 0.88 (unlabelled look-alike) and 0.58 are dropped.
    assert 0 not in m.negatives and 1 not in m.negatives
    assert m.negatives == [4, 5]


def test_search_widens_when_many_positives_push_the_bound_down():
    scores = [0.9] * 30 + [0.2] + [0.85] * 30 + [0.15, 0.1, 0.05]
    q, p = scores_to_embeddings(scores)
    positives = [list(range(30)) + [30]]  # 31 positives, the weakest at 0.2 -> bound 0.19
    [m] = mine(q, p, positives, n_negatives=3, candidates=10, margin=0.95)
    assert m.widened and m.negatives == [61, 62, 63]


def test_excluded_rows_never_become_negatives():
    q, p = scores_to_embeddings([0.8, 0.5, 0.4, 0.3])
    [m] = mine(q, p, [[0]], n_negatives=2, candidates=3, margin=0.95, excluded=[{1}])
    assert m.negatives == [2, 3]


# --- the stage on a tiny workspace ---------------------------------------------------------------

TOPICS = ["zebra", "violin", "glacier", "copper", "saffron", "lantern", "orbit", "harbor", "quartz", "meadow",
          "falcon", "canyon", "pepper", "anchor", "marble", "thunder", "cedar", "comet", "velvet", "tundra"]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_upstream(ws, corpus, questions):
    """Publish ingest and sdg outputs through the stage contract, as the real stages would."""
    from eft.stage_defs import STAGE_DEFS  # noqa: F401
    from eft.workspace import combined_digest, digest_tree, write_json_atomic

    for stage, fname, rows in (("ingest", "corpus.jsonl", corpus), ("sdg", "questions.jsonl", questions)):
        d = ws.stage_dir(stage)
        write_jsonl(d / fname, rows)
        outs = digest_tree(d)
        write_json_atomic(d / "manifest.json", {"status": "succeeded", "outputsDigest": combined_digest(outs),
                                                "fingerprint": {}, "counts": {}})


@pytest.fixture
def tiny(tmp_path):
    corpus = [{"_id": f"d{i}", "title": t.title(), "text": f"The {t} handbook explains how a {t} is kept safe."}
              for i, t in enumerate(TOPICS)]
    corpus.append({"_id": "dup-of-d0", "title": "Zebra", "text": corpus[0]["text"]})
    questions = [{"_id": f"q{i}", "text": f"how do I keep a {t} safe", "hops": 1, "positives": [f"d{i}"],
                  **({"backend": "offline"} if i % 2 else {})} for i, t in enumerate(TOPICS)]
    questions.append({"_id": "multi", "text": "zebra and violin safety", "hops": 2, "positives": ["d0", "d1"],
                      "backend": "openai"})
    questions.append({"_id": "orphan", "text": "nothing", "hops": 1, "positives": ["not-in-corpus"]})
    ws = Workspace(tmp_path / "ws")
    fake_upstream(ws, corpus, questions)
    return ws


def run_prepare(ws, **spec):
    efr = parse_document({"split": {"validation": 0.1, "test": 0.2, "seed": 1}, **spec})
    execute_stage(efr, ws, "prepare")
    d = ws.stage_dir("prepare")
    rows = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
    return d, rows, json.loads((d / "stats.json").read_text())


def read_qrels(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    return [tuple(x.split("\t")) for x in lines[1:]]


def test_prepare_stage_outputs(tiny):
    d, rows, stats = run_prepare(tiny, mining={"negatives": 3, "candidates": 10})
    assert stats["questionsWithoutPositiveInCorpus"] == 1
    test_q = {q for q, _, _ in read_qrels(d / "beir" / "qrels" / "test.tsv")}
    dev_q = {q for q, _, _ in read_qrels(d / "beir" / "qrels" / "dev.tsv")}
    train_q = {r["qid"] for r in rows}
    assert test_q and dev_q and train_q
    assert not (test_q & train_q) and not (dev_q & train_q) and not (dev_q & test_q)  # no leakage
    assert sum(stats["questions"].values()) == 21
    for r in rows:
        assert len(r["negatives"]) == 3
        neg_ids = {n["_id"] for n in r["negatives"]}
        assert r["positive"]["_id"] not in neg_ids
        assert "dup-of-d0" not in neg_ids or r["positive"]["_id"] != "d0"
        assert r["positive"]["text"] and all(n["text"] for n in r["negatives"])
    metadata = {(q := json.loads(x))["_id"]: q["metadata"] for x in (d / "beir" / "queries.jsonl").read_text().splitlines()}
    queries = set(metadata)
    assert test_q | dev_q <= queries
    # who wrote each held-out question (sdg's backend): the gate does not take offline questions alone as evidence
    assert metadata["multi"]["source"] == "openai" and metadata["q1"]["source"] == "offline"
    assert metadata["q0"]["source"] == "unknown"
    for split, qids in (("test", test_q), ("dev", dev_q), ("train", train_q)):
        want = {}
        for q in qids:
            want[metadata[q]["source"]] = want.get(metadata[q]["source"], 0) + 1
        assert stats["split"]["questionSources"][split] == want
    corpus_ids = [json.loads(x)["_id"] for x in (d / "beir" / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus_ids) == 21


def split_of(d) -> dict[str, str]:
    return {q: s for s in ("train", "dev", "test") for q, _, _ in read_qrels(d / "beir" / "qrels" / f"{s}.tsv")}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_chunk_split_keeps_a_multi_hop_question_with_its_chunks_questions(tiny, seed):
    d, _, stats = run_prepare(tiny, split={"validation": 0.1, "test": 0.2, "seed": seed, "by": "chunk"})
    where = split_of(d)
    assert where["multi"] == where["q0"] == where["q1"]
    assert stats["split"]["by"] == "chunk" and stats["split"]["groups"] == 19 and stats["split"]["largestGroup"] == 3
    seen = stats["split"]["seenInTraining"]
    assert seen["test"]["positivesSeenInTraining"] == seen["dev"]["positivesSeenInTraining"] == 0
    assert seen["test"]["questions"] == stats["questions"]["test"] > 0


def test_the_question_split_reports_the_test_positives_it_leaks(tiny):
    # q0 and multi share d0: some seed puts one in train and the other in test, and the stats say so
    qids = [f"q{i}" for i in range(len(TOPICS))] + ["multi"]

    def leaks(seed):
        sp = split_questions(qids, 0.1, 0.2, seed)
        return "multi" in sp["test"] and {"q0", "q1"} & set(sp["train"])

    seed = next(s for s in range(200) if leaks(s))
    d, _, stats = run_prepare(tiny, split={"validation": 0.1, "test": 0.2, "seed": seed, "by": "question"})
    assert split_of(d)["multi"] == "test"
    seen = stats["split"]["seenInTraining"]["test"]
    assert stats["split"] == {"by": "question", "seenInTraining": stats["split"]["seenInTraining"],
                              "documentsSeenInTraining": stats["split"]["documentsSeenInTraining"],
                              "quotesRemoved": {"sentences": 0, "passages": 0, "keptWhole": 0,
                                                "wordExtractsLeftOut": 0},
                              "questionSources": stats["split"]["questionSources"]}
    assert seen["questionsWithSeenPositive"] >= 1 and seen["positivesSeenInTraining"] >= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_default_split_keeps_every_chunk_of_a_test_document_out_of_training(tmp_path, seed):
    # two chunks per document, as ingest cuts a long file; one question about each chunk
    corpus = [{"_id": f"d{i}-{k}", "title": t.title(), "text": f"Part {k} of the {t} handbook: keep a {t} safe.",
               "metadata": {"source": f"{t}.md", "position": k}} for i, t in enumerate(TOPICS) for k in (0, 1)]
    questions = [{"_id": f"q{i}-{k}", "text": f"{t} part {k}", "hops": 1, "positives": [f"d{i}-{k}"]}
                 for i, t in enumerate(TOPICS) for k in (0, 1)]
    ws = Workspace(tmp_path / "ws")
    fake_upstream(ws, corpus, questions)
    d, _, stats = run_prepare(ws, split={"validation": 0.1, "test": 0.2, "seed": seed})
    where = split_of(d)
    assert all(where[f"q{i}-0"] == where[f"q{i}-1"] for i in range(len(TOPICS)))  # both halves on one side
    assert stats["split"]["by"] == "document" and stats["split"]["groups"] == len(TOPICS)
    docs = stats["split"]["documentsSeenInTraining"]["test"]
    assert docs["documentsSeenInTraining"] == docs["questionsWithSeenDocument"] == 0 and docs["documents"] >= 1
    # the chunk split of the same questions puts sibling halves on both sides, and counts it
    _, _, chunked = run_prepare(ws, split={"validation": 0.1, "test": 0.2, "seed": seed, "by": "chunk"})
    assert chunked["split"]["seenInTraining"]["test"]["positivesSeenInTraining"] == 0
    assert chunked["split"]["documentsSeenInTraining"]["test"]["questionsWithSeenDocument"] >= 1


def test_multi_hop_question_unrolls_into_rows_sharing_negatives(tiny):
    positives = {f"q{i}": [f"d{i}"] for i in range(len(TOPICS))} | {"multi": ["d0", "d1"]}
    seed = next(s for s in range(100) if "multi" in split_by_chunk(positives, str, 0.1, 0.2, s).splits["train"])
    efr = parse_document({"split": {"validation": 0.1, "test": 0.2, "seed": seed},
                          "mining": {"negatives": 3, "candidates": 10}})
    execute_stage(efr, tiny, "prepare")
    rows = [json.loads(x) for x in (tiny.stage_dir("prepare") / "train.jsonl").read_text().splitlines()]
    multi = [r for r in rows if r["qid"] == "multi"]
    assert sorted(r["positive"]["_id"] for r in multi) == ["d0", "d1"]
    assert multi[0]["negatives"] == multi[1]["negatives"] and len(multi[0]["negatives"]) == 3
    neg_ids = {n["_id"] for n in multi[0]["negatives"]}
    assert not ({"d0", "d1", "dup-of-d0"} & neg_ids)  # neither positive nor the copy of one


def test_fewer_than_n_negatives_policies(tiny):
    # 21 passages, 30 wanted: nobody can have enough.
    _, rows, stats = run_prepare(tiny, mining={"negatives": 30, "candidates": 30, "fewerThanNegatives": "keep"})
    assert stats["questionsWithFewerNegatives"] == stats["questions"]["train"]
    assert all(len(r["negatives"]) < 30 for r in rows)
    _, padded_rows, padded = run_prepare(tiny, mining={"negatives": 30, "candidates": 30})
    assert padded["questionsPadded"] == padded["questionsWithFewerNegatives"] > 0
    from eft.pipeline import StageFailed

    with pytest.raises(StageFailed, match="no training rows left"):
        run_prepare(tiny, mining={"negatives": 30, "candidates": 30, "fewerThanNegatives": "drop"})


def test_prepare_loads_the_model_on_the_device_of_its_settings(tiny):
    from eft.pipeline import StageFailed
    from eft.settings import StageSettings

    efr = parse_document({"split": {"validation": 0.1, "test": 0.2, "seed": 1}})
    with pytest.raises(StageFailed, match="no-such-device"):
        execute_stage(efr, tiny, "prepare", settings=StageSettings(device="no-such-device"))


def test_a_document_label_trains_on_every_chunk_or_on_its_closest_one(tmp_path):
    # zebra's document was cut in two; a supplied label names the whole document (sdg's positiveGroups)
    corpus = [{"_id": f"d{i}", "title": t.title(), "text": f"The {t} handbook explains how a {t} is kept safe.",
               "metadata": {"source": f"{t}.md"}} for i, t in enumerate(TOPICS)]
    corpus += [{"_id": "zebra-1", "title": "Zebra", "text": "Appendix: the index and the list of contributors.",
                "metadata": {"source": "zebra.md", "position": 1}}]
    questions = [{"_id": f"q{i}", "text": f"how do I keep a {t} safe", "hops": 1, "positives": [f"d{i}"]}
                 for i, t in enumerate(TOPICS)]
    questions[0] |= {"positives": ["zebra-1", "d0"], "positiveGroups": [["zebra-1", "d0"]], "backend": "supplied"}
    ws = Workspace(tmp_path / "ws")
    fake_upstream(ws, corpus, questions)
    seed = next(s for s in range(100) if "q0" in split_questions([q["_id"] for q in questions], 0.1, 0.2, s)["train"])
    spec = {"split": {"validation": 0.1, "test": 0.2, "seed": seed, "by": "question"},
            "mining": {"negatives": 3, "candidates": 10}}
    # the default: every chunk of the document trains
    _, every, every_stats = run_prepare(ws, **spec)
    assert sorted(r["positive"]["_id"] for r in every if r["qid"] == "q0") == ["d0", "zebra-1"]
    assert not any("otherPositives" in r for r in every)
    assert every_stats["documentPositives"] == {"rule": "everyChunk", "labelsOverSeveralChunks": 0,
                                                "chunksNotTrainedOn": 0}
    # bestChunk: only the chunk the base model finds closest to the question
    _, rows, stats = run_prepare(ws, **spec, queries={"documentPositives": "bestChunk"})
    [row] = [r for r in rows if r["qid"] == "q0"]
    assert row["positive"]["_id"] == "d0" and row["otherPositives"] == ["zebra-1"]
    assert stats["documentPositives"] == {"rule": "bestChunk", "labelsOverSeveralChunks": 1, "chunksNotTrainedOn": 1}
    assert all("otherPositives" not in r for r in rows if r["qid"] != "q0")
    for r in rows:  # the untrained chunk is still a positive of q0: never its negative
        assert r["qid"] != "q0" or "zebra-1" not in {n["_id"] for n in r["negatives"]}
    # the rule is one of prepare's inputs: changing it makes prepare stale
    from eft.pipeline import is_up_to_date

    assert is_up_to_date(parse_document({**spec, "queries": {"documentPositives": "bestChunk"}}), ws, "prepare")
    assert not is_up_to_date(parse_document(spec), ws, "prepare")
