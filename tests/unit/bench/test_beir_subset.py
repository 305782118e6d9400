"""bench/beir_subset.py: the subset keeps the chosen documents' lines, their judgements and only their queries."""

import json

from bench.beir_subset import main


def _write_beir(root, n_docs=5):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) + "\n" for i in range(n_docs)))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(4)))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td3\t2\nq1\td1\t1\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\nq3\td4\t1\n")


def test_keeps_the_window_its_judgements_and_their_queries(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write_beir(src)
    assert main([str(src), str(dst), "--start", "1", "--count", "2"]) == 0
    lines = (src / "corpus.jsonl").read_text().splitlines(keepends=True)
    assert (dst / "corpus.jsonl").read_text() == "".join(lines[1:3])  # d1, d2 byte for byte
    assert (dst / "qrels" / "train.tsv").read_text() == "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
    assert (dst / "qrels" / "test.tsv").read_text() == "query-id\tcorpus-id\tscore\nq2\td2\t1\n"
    assert [json.loads(ln)["_id"] for ln in (dst / "queries.jsonl").read_text().splitlines()] == ["q1", "q2"]
    assert "train: 1 judgements over 1 queries" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write_beir(src)
    assert main([str(src), str(dst), "--start", "9"]) == 2
    assert "has 5 documents: none from --start 9" in capsys.readouterr().err
    (src / "qrels" / "test.tsv").unlink()
    assert main([str(src), str(dst)]) == 2
    assert "test.tsv not found" in capsys.readouterr().err
    assert not dst.exists()
