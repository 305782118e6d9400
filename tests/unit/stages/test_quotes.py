"""quotes: validation and test passages lose the sentences their questions copy; prepare writes them so."""

import json

from eft.stages.quotes import remove_quoted, unquote_passages
from tests.unit.stages.test_prepare import fake_upstream, read_qrels, run_prepare

TEXT = ("Copper wiring carries current through old houses safely. "
        "Inspectors look for green corrosion at every junction box.\n\n"
        "A licensed electrician replaces frayed copper runs within one working day.")


def test_a_quoted_sentence_goes_and_the_rest_keeps_its_paragraphs():
    rest, removed = remove_quoted(TEXT, ["inspectors look for green corrosion at every junction box"])
    assert removed == 1
    assert rest == ("Copper wiring carries current through old houses safely.\n\n"
                    "A licensed electrician replaces frayed copper runs within one working day.")


def test_a_bridge_question_quoting_two_sentences_removes_both():
    q = "Copper wiring carries current through old houses safely; and a licensed electrician replaces frayed copper runs within one working day"
    rest, removed = remove_quoted(TEXT, [q])
    assert removed == 2 and rest == "Inspectors look for green corrosion at every junction box."


def test_short_shared_phrases_and_paraphrases_are_not_quotes():
    # "in old houses" is shared, but no whole sentence of 5+ words is copied
    rest, removed = remove_quoted(TEXT + " It is safe.", ["is copper safe in old houses", "It is safe"])
    assert removed == 0 and rest == TEXT + " It is safe."


def test_only_positives_of_the_given_questions_change_and_short_leftovers_stay_whole():
    corpus = [{"_id": "a", "title": "Copper", "text": TEXT},
              {"_id": "b", "title": "", "text": "Glaciers retreat a little further up the valley every summer."},
              {"_id": "c", "title": "", "text": TEXT}]
    questions = [{"text": "Inspectors look for green corrosion at every junction box", "positives": ["a"]},
                 {"text": "Glaciers retreat a little further up the valley every summer", "positives": ["b"]}]
    out, stats = unquote_passages(corpus, questions)
    assert out[0] == {"_id": "a", "title": "Copper", "text": remove_quoted(TEXT, [questions[0]["text"]])[0]}
    assert out[1] is corpus[1]  # nothing would be left: kept whole, and counted
    assert out[2] is corpus[2]  # the same text, but not a positive of these questions
    assert stats.describe() == {"sentences": 1, "passages": 1, "keptWhole": 1}
    assert corpus[0]["text"] == TEXT  # the input is not modified


def test_prepare_unquotes_test_passages_only_in_beir_and_trains_on_whole_passages(tmp_path):
    from eft.workspace import Workspace

    topics = ["zebra", "violin", "glacier", "copper", "saffron", "lantern", "orbit", "harbor", "quartz", "meadow"]
    corpus = [{"_id": f"d{i}", "title": "",
               "text": f"The {t} guild meets every spring near the river. Members trade old {t} stories by the fire until dawn."}
              for i, t in enumerate(topics)]
    questions = [{"_id": f"q{i}", "text": f"The {t} guild meets every spring near the river", "hops": 1,
                  "positives": [f"d{i}"], "kind": "ict"} for i, t in enumerate(topics)]
    ws = Workspace(tmp_path / "ws")
    fake_upstream(ws, corpus, questions)

    def beir_texts(d):
        return {json.loads(x)["_id"]: json.loads(x)["text"] for x in (d / "beir" / "corpus.jsonl").read_text().splitlines()}

    d, rows, stats = run_prepare(ws, mining={"negatives": 1, "candidates": 5})
    held_out = {doc for s in ("dev", "test") for _, doc, _ in read_qrels(d / "beir" / "qrels" / f"{s}.tsv")}
    texts = beir_texts(d)
    assert held_out and stats["split"]["quotesRemoved"] == {"sentences": len(held_out), "passages": len(held_out),
                                                            "keptWhole": 0, "wordExtractsLeftOut": 0}
    for i, t in enumerate(topics):
        whole = corpus[i]["text"]
        assert texts[f"d{i}"] == (f"Members trade old {t} stories by the fire until dawn." if f"d{i}" in held_out else whole)
    assert all(r["positive"]["text"] == corpus[int(r["positive"]["_id"][1:])]["text"] for r in rows)

    d, _, stats = run_prepare(ws, mining={"negatives": 1, "candidates": 5},
                              split={"validation": 0.1, "test": 0.2, "seed": 1, "removeQuotes": False})
    assert stats["split"]["quotesRemoved"] is None
    assert beir_texts(d) == {c["_id"]: c["text"] for c in corpus}


def test_prepare_leaves_the_offline_word_extracts_out_of_validation_and_test(tmp_path):
    from eft.workspace import Workspace

    topics = ["zebra", "violin", "glacier", "copper", "saffron", "lantern", "orbit", "harbor", "quartz", "meadow"]
    corpus = [{"_id": f"d{i}", "title": t.title(),
               "text": f"The {t} guild meets every spring near the river. Members trade old {t} stories by the fire."}
              for i, t in enumerate(topics)]
    questions = []
    for i, t in enumerate(topics):
        questions += [{"_id": f"s{i}", "text": f"The {t} guild meets every spring near the river", "hops": 1,
                       "positives": [f"d{i}"], "backend": "offline", "kind": "ict"},
                      {"_id": f"k{i}", "text": f"{t} guild stories", "hops": 1, "positives": [f"d{i}"],
                       "backend": "offline", "kind": "keywords"},
                      # an LLM question made of the passage's words is not a generator's extract: it stays
                      {"_id": f"l{i}", "text": f"{t} guild stories", "hops": 1, "positives": [f"d{i}"],
                       "backend": "openai"}]
    ws = Workspace(tmp_path / "ws")
    fake_upstream(ws, corpus, questions)
    d, rows, stats = run_prepare(ws, mining={"negatives": 1, "candidates": 5},
                                 split={"validation": 0.2, "test": 0.2, "seed": 3})
    held_out = [q for s in ("dev", "test") for q, _, _ in read_qrels(d / "beir" / "qrels" / f"{s}.tsv")]
    docs = {doc for s in ("dev", "test") for _, doc, _ in read_qrels(d / "beir" / "qrels" / f"{s}.tsv")}
    assert held_out and not [q for q in held_out if q.startswith("k")]
    assert {q[1:] for q in held_out if q.startswith("s")} == {q[1:] for q in held_out if q.startswith("l")}
    assert stats["split"]["quotesRemoved"]["wordExtractsLeftOut"] == len(docs)
    assert stats["questions"]["dev"] + stats["questions"]["test"] == len(held_out)
    # left out, not moved: training never sees a question about a held-out document
    assert not {r["qid"] for r in rows} & {f"k{d[1:]}" for d in docs}

    # the stats say what they count when the option is off
    _, _, off = run_prepare(ws, mining={"negatives": 1, "candidates": 5},
                            split={"validation": 0.2, "test": 0.2, "seed": 3, "removeQuotes": False})
    assert off["split"]["quotesRemoved"] is None and off["questions"]["test"] > stats["questions"]["test"]
