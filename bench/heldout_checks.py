"""Which label-free held-out check agrees with the human test queries? An exploration, not a product path.

    MAXLEN=256 python bench/heldout_checks.py WORKSPACE/offline HUMAN_BEIR_DIR base=bundled tuned=WORKSPACE/offline/train/model

WORKSPACE is a bench/quality.py workspace (offline mode, after prepare); every model given is scored with
nDCG@10 on the product's synthetic test split (C0) and on variants built from the same held-out questions and
documents, beside the human test queries of HUMAN_BEIR_DIR. Results: bench/results/*heldout-check-variants*.
"""
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eft.models import BaseModelSpec, load_sentence_model  # noqa: E402
from eft import metrics  # noqa: E402
from eft.stages.chunking import split_sentences  # noqa: E402
from eft.stages.quotes import MIN_QUOTE_WORDS, MIN_REST_WORDS, _norm  # noqa: E402
from eft.stages.sdg import offline  # noqa: E402

if len(sys.argv) < 4 or not Path(sys.argv[1], "prepare/beir").is_dir():
    sys.exit(__doc__ + "\nneeds WORKSPACE/offline (after prepare), HUMAN_BEIR_DIR and at least one name=model")
ws = Path(sys.argv[1])  # an offline workspace after prepare
human_dir = sys.argv[2]
models = dict(a.split("=", 1) for a in sys.argv[3:])  # name=path|bundled
maxlen = int(os.environ.get("MAXLEN", "256"))

def jl(p):
    return [json.loads(l) for l in open(p)]

chunks = {c["_id"]: c for c in jl(ws / "ingest/corpus.jsonl")}
qs = {q["_id"]: q for q in jl(ws / "sdg/questions.jsonl")}
product_test = metrics.load_beir(ws / "prepare/beir", "test")
test_q = product_test.qrels
heldout = [qs[q] for q in test_q]
beir_corpus = {r["_id"]: r for r in jl(ws / "prepare/beir/corpus.jsonl")}
doc_of = {cid: (c.get("metadata") or {}).get("source") or cid for cid, c in chunks.items()}
doc_chunks = defaultdict(list)
for cid, d in doc_of.items():
    doc_chunks[d].append(cid)
test_docs = sorted({doc_of[p] for q in heldout for p in q["positives"]})
print(f"workspace {ws}: {len(chunks)} chunks, {len(heldout)} test questions "
      f"({Counter(q.get('kind') for q in heldout)}), {len(test_docs)} test documents")

# the offline generator's own tf-idf keywords and prepare's own notion of a quoted sentence
idf = offline._idf(list(chunks.values()))

def kw(text, k):
    return " ".join(offline._keywords(text, idf, k))

def sentences(text):
    return [s for p in text.split("\n\n") for s in split_sentences(" ".join(p.split()))]

def remove_window(text, quoted, w):
    ss = sentences(text)
    hit = [i for i, s in enumerate(ss)
           if len(_norm(s).split()) >= MIN_QUOTE_WORDS and any(_norm(s) in _norm(q) for q in quoted)]
    drop = {j for i in hit for j in range(i - w, i + w + 1)}
    rest = [s for j, s in enumerate(ss) if j not in drop]
    return " ".join(rest) if len(" ".join(rest).split()) >= MIN_REST_WORDS else text

checks = {}
base_corpus = {cid: {"title": c.get("title") or "", "text": c["text"]} for cid, c in chunks.items()}
# C0: the product's split as written
checks["C0 product test"] = product_test
# C3: remove the quoted sentence and w neighbours on each side
for w in (1, 2):
    quoting = defaultdict(list)
    for q in heldout:
        for p in q["positives"]:
            quoting[p].append(q["text"])
    corpus = dict(base_corpus)
    for p, texts in quoting.items():
        corpus[p] = {"title": corpus[p]["title"], "text": remove_window(chunks[p]["text"], texts, w)}
    checks[f"C3 window +-{w}"] = metrics.BeirData(corpus, {q["_id"]: q["text"] for q in heldout}, dict(test_q))
# C1: keywords of the quoted sentence, sentence removed (prepare's corpus)
ict = [q for q in heldout if q.get("kind") == "ict"]
checks["C1 sentence keywords"] = metrics.BeirData(
    {k: {"title": v.get("title") or "", "text": v["text"]} for k, v in beir_corpus.items()},
    {q["_id"]: kw(q["text"], 4) for q in ict}, {q["_id"]: test_q[q["_id"]] for q in ict})
# C5: title only -> every chunk of the document, titles stripped from the whole corpus
notitle = {cid: {"title": "", "text": c["text"]} for cid, c in chunks.items()}
titled = [d for d in test_docs if (chunks[doc_chunks[d][0]].get("title") or "").strip()]
checks["C5 title -> doc chunks (no titles)"] = metrics.BeirData(
    notitle, {f"t{i}": chunks[doc_chunks[d][0]]["title"] for i, d in enumerate(titled)},
    {f"t{i}": {c: 1 for c in doc_chunks[d]} for i, d in enumerate(titled)})
# C8: the sentence -> the other chunks of its document (its own chunk left out of the corpus)
c8q, c8r, drop = {}, {}, set()
for q in ict:
    (p,) = q["positives"]
    others = [c for c in doc_chunks[doc_of[p]] if c != p]
    if others:
        c8q[q["_id"]] = q["text"]
        c8r[q["_id"]] = {c: 1 for c in others}
        drop.add(p)
checks["C8 sentence -> sibling chunks"] = metrics.BeirData(
    {k: v for k, v in base_corpus.items() if k not in drop}, c8q, c8r)
checks["HUMAN test queries"] = metrics.load_beir(human_dir, "test")

res = {}
for name, path in models.items():
    m = load_sentence_model(BaseModelSpec.model_validate({"maxSeqLength": maxlen}), path=None if path == "bundled" else path)
    for cname, data in checks.items():
        r = metrics.retrieve(m, data, 10)
        res[(name, cname)] = metrics.score(data.qrels, r.results, [10])["ndcg@10"]
    print(name, "done", flush=True)
names = list(models)
print(f"{'check':40s} {'n':>4s} " + " ".join(f"{n:>16s}" for n in names))
for cname, data in checks.items():
    b = res[(names[0], cname)]
    cells = [f"{res[(n, cname)]:.4f} {100 * (res[(n, cname)] / b - 1):+6.1f}%" if b else f"{res[(n, cname)]:.4f}"
             for n in names]
    print(f"{cname:40s} {len(data.queries):4d} " + " ".join(f"{c:>16s}" for c in cells))
