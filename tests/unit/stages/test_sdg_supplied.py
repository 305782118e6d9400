"""Supplied queries (spec.queries): reading BEIR folders and .jsonl files, matching them to chunks, and the sdg
stage using them alone or beside generated questions."""

from __future__ import annotations

import json
import os

import pytest

from eft.pipeline import StageFailed, execute_stage, is_up_to_date
from eft.spec import QueriesSpec, parse_document
from eft.stages.sdg.supplied import (ChunkIndex, SuppliedQueriesError, match_queries, read_queries,
                                     supplied_questions)
from eft.textutil import content_id
from eft.workspace import Workspace
from tests.unit.stages.test_prepare import fake_upstream, write_jsonl

TEXTS = {
    "MED-1": ["Statins lower LDL cholesterol in adults with heart disease.",
              "Muscle pain is the side effect most often reported with statins."],
    "MED-2": ["Vitamin D deficiency is common in northern latitudes during winter."],
    "MED-3": ["Green tea catechins were studied for their effect on blood pressure."],
}


def chunks() -> list[dict]:
    """Chunks as ingest writes them from a .jsonl corpus (MED-1 cut in two) and from a markdown file."""
    out = [{"_id": content_id(t), "title": "", "text": t, "metadata": {"source": f"corpus.jsonl#{doc}", "position": i}}
           for doc, texts in TEXTS.items() for i, t in enumerate(texts)]
    md = "Runbook: restart the ingestion worker after a failed deploy."
    out.append({"_id": content_id(md), "title": "Runbook", "text": md, "metadata": {"source": "ops/runbook.md",
                                                                                      "position": 0}})
    return out


def cid(text: str) -> str:
    return content_id(text)


def write_beir(root, qrels: list[tuple[str, str, int]], queries: dict[str, str], split: str = "train"):
    write_jsonl(root / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                 + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels))


def test_a_beir_folder_maps_documents_to_every_chunk_cut_from_them(tmp_path):
    write_beir(tmp_path, [("q1", "MED-1", 1), ("q1", "MED-3", 0), ("q2", "MED-2", 2), ("q2", "MED-404", 1),
                          ("q3", "MED-404", 1)],
               {"q1": "do statins hurt muscles", "q2": "vitamin d in winter", "q3": "a query about nothing here",
                "q4": "unjudged"})
    qs, stats = supplied_questions(QueriesSpec(path=str(tmp_path)), chunks())
    by_id = {q["_id"]: q for q in qs}
    assert set(by_id) == {"supplied:q1", "supplied:q2"}
    assert by_id["supplied:q1"]["positives"] == [cid(t) for t in TEXTS["MED-1"]]  # grade 0 (MED-3) is not relevant
    assert by_id["supplied:q2"]["positives"] == [cid(TEXTS["MED-2"][0])]
    # a label naming several chunks stays a group, from which prepare trains on one (queries.documentPositives)
    assert by_id["supplied:q1"]["positiveGroups"] == [[cid(t) for t in TEXTS["MED-1"]]]
    assert "positiveGroups" not in by_id["supplied:q2"]
    assert all(q["backend"] == "supplied" and q["hops"] == 1 for q in qs)
    assert stats["read"] == 3 and stats["kept"] == 2 and stats["withoutPositive"] == 1  # q4 has no judgement
    assert stats["unmatchedIds"] == 2 and stats["unmatchedIdExamples"] == ["MED-404", "MED-404"]


def test_a_jsonl_file_names_chunks_files_rows_and_passages(tmp_path):
    f = tmp_path / "faq.jsonl"
    write_jsonl(f, [
        {"_id": "a", "query": "restart the worker", "ids": ["ops/runbook.md"]},
        {"_id": "b", "query": "statin side effects", "ids": [cid(TEXTS["MED-1"][1])]},
        {"_id": "c", "query": "bp and tea", "passages": ["  green tea CATECHINS were studied for their effect on "
                                                          "blood pressure. "]},  # same text, other spacing/case
        {"_id": "d", "query": "ldl", "passages": ["lower LDL cholesterol"]},  # contained in one chunk
        {"_id": "e", "query": "row id", "ids": ["corpus.jsonl#MED-2"]},
        {"_id": "f", "query": "nothing", "passages": ["a sentence that appears nowhere"]},
        {"_id": "a", "query": "a repeated id", "ids": ["MED-2"]},
        {"_id": "g", "query": "statins", "passages": ["statins"], "ids": ["MED-2"]},  # a word of two chunks
    ])
    qs, stats = supplied_questions(QueriesSpec(path=str(f)), chunks())
    got = {q["_id"].removeprefix("supplied:"): q["positives"] for q in qs}
    md = chunks()[-1]["_id"]
    assert got == {"a": [md], "b": [cid(TEXTS["MED-1"][1])], "c": [cid(TEXTS["MED-3"][0])],
                   "d": [cid(TEXTS["MED-1"][0])], "e": [cid(TEXTS["MED-2"][0])],
                   "g": [cid(TEXTS["MED-2"][0]), *map(cid, TEXTS["MED-1"])]}
    groups = {q["_id"].removeprefix("supplied:"): q.get("positiveGroups") for q in qs}
    assert groups["g"] == [[cid(TEXTS["MED-2"][0])], [cid(t) for t in TEXTS["MED-1"]]]  # one group per label
    assert groups["a"] is groups["d"] is None
    assert stats["unmatchedPassages"] == 1 and stats["withoutPositive"] == 1 and stats["duplicateIds"] == 1


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ('{"query": "x", "ids": ["MED-2"]}\nnot json\n', "line 2 is not JSON"),
    ('{"query": "x"}\n', "line 1: the query has neither 'ids' nor 'passages'"),
    ('{"text": "x", "ids": ["MED-2"]}\n', "line 1: expected an object with a 'query' string"),
    ('{"query": "x", "ids": {"a": 1}}\n', "line 1: 'ids' must be a list of strings"),
    ('{"query": "x", "ids": ["MED-404"]}\n', "none of the 1 queries"),
])
def test_bad_query_files_get_one_clear_error(tmp_path, content, message):
    f = tmp_path / "q.jsonl"
    if content is not None:
        f.write_text(content)
    with pytest.raises(SuppliedQueriesError, match=message):
        supplied_questions(QueriesSpec(path=str(f)), chunks())


def test_a_beir_folder_without_the_split_says_what_is_missing(tmp_path):
    write_beir(tmp_path, [("q1", "MED-1", 1)], {"q1": "statins"}, split="test")
    with pytest.raises(SuppliedQueriesError, match=r"missing qrels/train.tsv .*queries.split is 'train'"):
        read_queries(QueriesSpec(path=str(tmp_path)))
    assert [q.qid for q in read_queries(QueriesSpec(path=str(tmp_path), split="test"))] == ["q1"]
    write_beir(tmp_path, [("q9", "MED-1", 1)], {"q1": "statins"}, split="dev")
    with pytest.raises(SuppliedQueriesError, match="names 1 queries missing from queries.jsonl"):
        read_queries(QueriesSpec(path=str(tmp_path), split="dev"))


def test_the_passage_scan_is_built_only_when_an_inexact_passage_needs_it():
    index = ChunkIndex(chunks())
    match_queries([], index)
    assert index._normalized is None
    assert index.by_passage(TEXTS["MED-2"][0]) == [cid(TEXTS["MED-2"][0])] and index._normalized is None
    assert index.by_passage("Vitamin D deficiency") == [cid(TEXTS["MED-2"][0])] and index._normalized is not None


# --- the sdg stage --------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    fake_upstream(ws, chunks(), [])
    (ws.stage_dir("sdg") / "manifest.json").unlink()  # only ingest is done
    return ws


def spec(queries: dict, **sdg):
    return parse_document({"metadata": {"name": "s"}, "spec": {"queries": queries,
                                                               "sdg": {"backend": "offline", **sdg}}})


def stage_questions(ws) -> list[dict]:
    return [json.loads(x) for x in (ws.stage_dir("sdg") / "questions.jsonl").read_text().splitlines()]


def test_only_supplied_queries_are_the_questions(workspace, tmp_path):
    f = tmp_path / "q.jsonl"
    write_jsonl(f, [{"query": "statin side effects", "ids": ["MED-1"]}, {"query": "tea", "ids": ["MED-3"]}])
    m = execute_stage(spec({"path": str(f)}), workspace, "sdg")
    qs = stage_questions(workspace)
    assert [q["_id"] for q in qs] == ["supplied:1", "supplied:2"] and m["counts"]["supplied"] == 2
    stats = json.loads((workspace.stage_dir("sdg") / "stats.json").read_text())
    assert stats["backend"] == "supplied" and stats["generated"] == 0 and stats["supplied"]["kept"] == 2


def test_with_generated_adds_the_supplied_queries_to_the_generated_ones(workspace, tmp_path):
    f = tmp_path / "q.jsonl"
    write_jsonl(f, [{"query": "statin side effects", "ids": ["MED-1"]}])
    m = execute_stage(spec({"path": str(f), "use": "withGenerated"}, questionsPerChunk=2, maxHops=1), workspace, "sdg")
    qs = stage_questions(workspace)
    generated = [q for q in qs if q["backend"] == "offline"]
    assert generated and [q["_id"] for q in qs if q["backend"] == "supplied"] == ["supplied:1"]
    assert m["counts"]["questions"] == len(generated) + 1 and m["summary"].endswith("(offline+supplied)")


def test_an_edited_query_file_makes_sdg_stale_and_a_bad_one_fails_the_stage(workspace, tmp_path):
    f = tmp_path / "q.jsonl"
    write_jsonl(f, [{"query": "statin side effects", "ids": ["MED-1"]}])
    efr = spec({"path": str(f)})
    execute_stage(efr, workspace, "sdg")
    assert is_up_to_date(efr, workspace, "sdg")
    f.write_text(f.read_text() + json.dumps({"query": "tea", "ids": ["MED-3"]}) + "\n")
    os.utime(f, (1, 1))  # a new size and mtime, as an edit gives
    assert not is_up_to_date(efr, workspace, "sdg")
    f.write_text('{"query": "tea", "ids": ["MED-404"]}\n')
    with pytest.raises(StageFailed) as e:
        execute_stage(efr, workspace, "sdg")
    assert e.value.message.startswith("queries: none of the 1 queries in ") and "\n" not in e.value.message
    assert len(stage_questions(workspace)) == 1  # the previous output stays
