"""ingest: formats, chunk boundaries and overlap, stable ids, bad files, zero chunks."""

import json

import pytest
from eft.stages.chunking import Chunker
from eft.stages.ingest_readers import parse_file

from eft.models import load_tokenizer
from eft.pipeline import StageFailed, execute_stage
from eft.spec import parse_document
from eft.workspace import Workspace


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bundled")


def sentences(n, topic="alpha"):
    return " ".join(f"The {topic} component number {i} stores its setting in register {i * 7}." for i in range(n))


def test_markdown_html_rst_json_are_stripped():
    md = parse_file("a/guide.md", b"# Install guide\n\nRun **make** and see [the docs](http://x.io).\n\n```\ncode\n```\n")[0]
    assert md.title == "Install guide"
    assert "**" not in md.text and "](" not in md.text and "```" not in md.text and "the docs" in md.text
    h = parse_file("p.html", b"<html><head><title>T</title><script>var x=1;</script></head>"
                            b"<body><p>First para.</p><p>Second &amp; last.</p></body></html>")[0]
    assert h.title == "T" and "var x" not in h.text and "Second & last." in h.text and "<p>" not in h.text
    r = parse_file("r.rst", b"Title\n=====\n\n.. note:: hidden\n\nSee :ref:`the part <x>` here.\n")[0]
    assert r.title == "Title" and "the part" in r.text and ":ref:" not in r.text and "note::" not in r.text
    j = parse_file("d.json", json.dumps([{"title": "A", "text": "alpha text"}, {"title": "B", "text": "beta"}]).encode())
    assert [(d.title, d.text) for d in j] == [("A", "alpha text"), ("B", "beta")]


def test_beir_corpus_jsonl_rows_become_documents():
    data = "\n".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) for i in range(3)).encode()
    docs = parse_file("corpus.jsonl", data)
    assert [d.source for d in docs] == ["corpus.jsonl#d0", "corpus.jsonl#d1", "corpus.jsonl#d2"]
    assert docs[1].title == "T1" and docs[1].text == "text 1"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"), (b"   \n", "empty file"), (b"\x00\x01binary", "binary"), (b"\xff\xfe\xfa bad", "not UTF-8"),
])
def test_bad_files_raise_with_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        parse_file("x.txt", data)


def test_chunks_respect_budget_and_cut_at_sentences(tok):
    ch = Chunker(tok, max_tokens=48, overlap_tokens=12)
    text = sentences(30)
    chunks = ch.chunk(text)
    assert len(chunks) > 3
    for c in chunks:
        assert ch.count(c) <= 48
        assert c.endswith(".") and c[0].isupper()  # whole sentences only


def test_overlap_repeats_the_previous_chunks_last_sentence(tok):
    ch = Chunker(tok, max_tokens=48, overlap_tokens=20)
    chunks = ch.chunk(sentences(12))
    for a, b in zip(chunks, chunks[1:]):
        last_sentence = a.split(". ")[-1]
        assert b.startswith(last_sentence.rstrip(".")), (a, b)
    no_overlap = Chunker(tok, max_tokens=48, overlap_tokens=0).chunk(sentences(12))
    assert sum(len(c) for c in no_overlap) < sum(len(c) for c in chunks)


def test_paragraphs_are_kept_apart_and_long_sentences_split(tok):
    ch = Chunker(tok, max_tokens=40, overlap_tokens=8)
    long_sentence = " ".join(f"word{i}" for i in range(200)) + "."
    chunks = ch.chunk("Short intro.\n\n" + long_sentence)
    assert all(ch.count(c) <= 40 for c in chunks)
    joined = " ".join(chunks)
    assert "word0" in joined and "word199" in joined


def make_corpus(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.md").write_text("# Alpha\n\n" + sentences(40, "alpha"))
    (d / "sub" / "b.txt").write_text(sentences(10, "beta"))
    (d / "copy.txt").write_text(sentences(10, "beta"))  # same text: its chunks are duplicates
    (d / "empty.txt").write_text("")
    (d / "blob.txt").write_bytes(b"\x00\x00\x00binary")
    (d / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (d / "ignored.csv").write_text("a,b\n1,2\n")
    (d / ".hidden.md").write_text("secret notes")
    return d


def run_ingest(tmp_path, corpus_path, **chunking):
    efr = parse_document({"corpus": {"path": str(corpus_path), "chunking": chunking or {"maxTokens": 64,
                                                                                     "overlapTokens": 16}}})
    ws = Workspace(tmp_path / "ws")
    m = execute_stage(efr, ws, "ingest")
    rows = [json.loads(x) for x in (ws.stage_dir("ingest") / "corpus.jsonl").read_text().splitlines()]
    stats = json.loads((ws.stage_dir("ingest") / "stats.json").read_text())
    return m, rows, stats


def test_ingest_stage_end_to_end(tmp_path):
    d = make_corpus(tmp_path)
    m, rows, stats = run_ingest(tmp_path, d)
    sources = {r["metadata"]["source"] for r in rows}
    assert sources <= {"a.md", "sub/b.txt", "copy.txt"} and "a.md" in sources
    assert stats["duplicateChunksRemoved"] >= 1
    assert len({r["_id"] for r in rows}) == len(rows)
    skipped = {s["source"]: s["reason"] for s in stats["skipped"]}
    assert set(skipped) == {"empty.txt", "blob.txt", "latin.txt"}
    assert "binary" in skipped["blob.txt"] and "UTF-8" in skipped["latin.txt"]
    assert all(r["title"] == "Alpha" for r in rows if r["metadata"]["source"] == "a.md")
    assert m["counts"]["chunks"] == len(rows)


def test_chunk_ids_are_stable_across_runs_and_folders(tmp_path):
    d = make_corpus(tmp_path)
    _, rows1, _ = run_ingest(tmp_path / "one", d)
    _, rows2, _ = run_ingest(tmp_path / "two", d)
    assert [r["_id"] for r in rows1] == [r["_id"] for r in rows2]
    (d / "a.md").write_text("# Alpha\n\n" + sentences(40, "alpha") + " One more sentence at the end.")
    _, rows3, _ = run_ingest(tmp_path / "three", d)
    # Only the chunks touching the edit change id.
    assert len({r["_id"] for r in rows1} & {r["_id"] for r in rows3}) >= len(rows1) - 2


def test_zero_usable_chunks_is_a_clear_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.txt").write_bytes(b"\x00bin")
    with pytest.raises(StageFailed, match=r"no usable chunks .* 1 file\(s\) matched .* x.txt: binary"):
        run_ingest(tmp_path, d)
    with pytest.raises(StageFailed, match="does not exist"):
        run_ingest(tmp_path, tmp_path / "missing")


def test_builtin_kubernetes_corpus():
    from eft.stages.builtin_corpus import kubernetes_api_documents

    docs = list(kubernetes_api_documents())
    assert len(docs) >= 40
    job = next(d for d in docs if d.title.startswith("JobSpec"))
    assert "JobSpec.backoffLimit:" in job.text and "retries" in job.text
