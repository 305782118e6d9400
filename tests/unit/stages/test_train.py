"""The train stage on a tiny synthetic retrieval task the base model cannot solve.

Units carry invented attributes. Questions name an attribute by its question-side word ("zorblat"),
passages by an unrelated passage-side word ("glimmeric"); each unit has one passage per attribute, so
the base model can match the unit number but must guess the attribute. Training on units 1-24 teaches
the word pairs; dev and test ask about units the training never saw.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest
import torch
from eft.stages.train.loss import contrastive_loss, false_negative_mask
from eft.stages.train.rows import TrainRow, fit_negatives, known_positives, load_rows
from eft.stages.train.sampler import QidBatchSampler

from eft import metrics
from eft.pipeline import StageFailed, StageInputMissing, execute_stage
from eft.settings import StageSettings
from eft.spec import parse_document
from eft.workspace import Workspace, write_json_atomic

ATTRS = [("zorblat", "glimmeric"), ("quonk", "fesh"), ("blarn", "tavix")]
TRAIN_UNITS = range(1, 25)
DEV_UNITS = range(25, 29)
TEST_UNITS = range(29, 33)


def _value(unit: int, attr: int) -> str:
    return f"{(unit * 37 + attr * 11) % 90 + 10}"


def passage(unit: int, attr: int) -> dict:
    return {"_id": f"u{unit}-a{attr}", "text": f"The {ATTRS[attr][1]} of unit {unit} is {_value(unit, attr)}."}


def question(unit: int, attr: int) -> str:
    return f"what is the {ATTRS[attr][0]} of unit {unit}?"


def write_prepare(root: Path, n_neg: int = 2) -> Workspace:
    """A prepare stage folder in the workspace contract's format (train.jsonl + beir/ + manifest)."""
    ws = Workspace(root)
    d = root / "prepare"
    (d / "beir" / "qrels").mkdir(parents=True)
    rows = []
    for u in TRAIN_UNITS:
        for a in range(len(ATTRS)):
            negs = [passage(u, b) for b in range(len(ATTRS)) if b != a][:n_neg]
            rows.append({"qid": f"q{u}-{a}", "query": question(u, a), "hops": 1, "positive": passage(u, a),
                         "negatives": negs})
    # One two-hop question: two rows sharing a qid (and its negatives).
    rows += [{"qid": "q-multi", "query": "which units have the glimmeric values of units 3 and 4?", "hops": 2,
              "positive": passage(u, 0), "negatives": [passage(u, 1), passage(u, 2)][:n_neg]} for u in (3, 4)]
    with open(d / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    units = range(1, TEST_UNITS.stop)
    with open(d / "beir" / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({**passage(u, a), "title": ""}) + "\n" for u in units for a in range(len(ATTRS)))
    with open(d / "beir" / "queries.jsonl", "w") as f:
        for u in units:
            for a in range(len(ATTRS)):
                f.write(json.dumps({"_id": f"q{u}-{a}", "text": question(u, a)}) + "\n")
    for split, us in (("train", TRAIN_UNITS), ("dev", DEV_UNITS), ("test", TEST_UNITS)):
        with open(d / "beir" / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"q{u}-{a}\tu{u}-a{a}\t1\n" for u in us for a in range(len(ATTRS)))
    write_json_atomic(d / "manifest.json", {"stage": "prepare", "status": "succeeded", "outputsDigest": "fixture"})
    return ws


def make_spec(**training):
    t = {"epochs": 2, "learningRate": 1e-4, "batchSize": 16, "temperature": 0.05, "warmupRatio": 0.1, "seed": 7}
    t.update(training)
    return parse_document({"metadata": {"name": "t"}, "spec": {"training": t, "mining": {"negatives": 2},
                                                               "baseModel": {"maxSeqLength": 32}}})


def curve(stage_dir: Path) -> list[dict]:
    with open(stage_dir / "training_curve.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full training run (shared by the tests below)."""
    ws = write_prepare(tmp_path_factory.mktemp("ws-full"))
    efr = make_spec()
    manifest = execute_stage(efr, ws, "train")
    return efr, ws, manifest


# ---------------------------------------------------------------------------------------------- sampler


def test_batch_sampler_never_puts_one_qid_twice_in_a_batch():
    rng = random.Random(0)
    # Skewed: a few questions with many rows (multi-hop / many positives), most with one.
    qids = [f"q{i}" for i in range(300)] + [f"big{j % 5}" for j in range(60)] + [f"mid{j % 20}" for j in range(60)]
    rng.shuffle(qids)
    for world in (1, 2):
        for epoch in (0, 1):
            seen = []
            for rank in range(world):
                s = QidBatchSampler(qids, batch_size=16, seed=3, world_size=world, rank=rank)
                batches = s.batches(epoch)
                for b in batches:
                    assert len({qids[i] for i in b}) == len(b), "a batch holds one qid twice"
                    assert len(b) <= 16
                seen += [i for b in batches for i in b]
            assert len(seen) == len(set(seen))
            if world == 1:
                assert sorted(seen) == list(range(len(qids))), "every row exactly once per epoch"
            else:
                assert len(seen) >= len(qids) - 2 * 16 * world  # only incomplete global batches dropped
    s = QidBatchSampler(qids, 16, seed=3)
    assert s.batches(0) == s.batches(0) and s.batches(0) != s.batches(1)  # deterministic, reshuffled per epoch
    assert {len(b) for b in s.batches(0)} <= {15, 16}  # dealt evenly, no near-empty batches

    # A question with more rows than the epoch has batches (a broad query with hundreds of positives)
    # contributes one row per batch, a different subset each epoch.
    qids = [f"q{i}" for i in range(200)] + ["huge"] * 100
    s = QidBatchSampler(qids, 16, seed=1)
    for epoch in (0, 1):
        batches = s.batches(epoch)
        assert all(len({qids[i] for i in b}) == len(b) for b in batches)
        assert all(len(b) in (15, 16) for b in batches)
        huge = [i for b in batches for i in b if qids[i] == "huge"]
        assert len(huge) == len(batches) and len(set(huge)) == len(huge)
        assert sum(len(b) for b in batches) == 200 + len(batches)
    assert set(i for b in s.batches(0) for i in b) != set(i for b in s.batches(1) for i in b)


def test_false_negative_mask_and_loss():
    # Rows 0 and 1 belong to one question with positives A (id 0) and B (id 1); row 2 has positive A too
    # (another question that shares a passage). Columns: positives [A, B, A], then one negative each.
    known = torch.tensor(sorted([0 * 10 + 0, 0 * 10 + 1, 1 * 10 + 0]))
    row_q = torch.tensor([0, 0, 1])
    pids = torch.tensor([0, 1, 0, 5, 6, 7])
    labels = torch.arange(3)
    mask = false_negative_mask(row_q, pids, labels, known, n_ids=10)
    assert mask.tolist() == [
        [False, True, True, False, False, False],  # row 0: B is a sibling positive, the 2nd A a duplicate
        [True, False, True, False, False, False],
        [True, False, False, False, False, False],  # row 2: column 0 is its own positive's duplicate
    ]
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(3, 8, generator=g), torch.randn(6, 8, generator=g)
    loss = contrastive_loss(q, p, labels, mask, scale=20.0)
    # By hand: softmax cross-entropy over the unmasked columns only.
    sims = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T * 20.0
    expected = [torch.logsumexp(sims[i][~mask[i]], 0) - sims[i, i] for i in range(3)]
    assert loss.item() == pytest.approx(float(sum(expected) / 3), rel=1e-5)


def test_fit_negatives_pads_without_positives():
    rows = [TrainRow("a", "qa", "p1", "t1", [], []), TrainRow("a", "qa", "p2", "t2", ["n1"], ["tn1"]),
            TrainRow("b", "qb", "p3", "t3", ["n1", "n2", "n3"], ["tn1", "tn2", "tn3"])]
    out, padded = fit_negatives(rows, 2, seed=0)
    assert [len(r.neg_ids) for r in out] == [2, 2, 2]
    assert padded == 3
    kp = known_positives(rows)
    for r in out:
        assert not set(r.neg_ids) & kp[r.qid]
        assert len(set(r.neg_ids)) == 2


def test_other_positives_are_read_kept_and_never_padded_in(tmp_path):
    # prepare trained q "a" on p1 only; p2 (another chunk of its document) rides along as otherPositives
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"qid": "a", "query": "qa", "positive": {"_id": "p1", "text": "t1"}, "negatives": [],
                             "otherPositives": ["p2"]}) + "\n"
                 + json.dumps({"qid": "b", "query": "qb", "positive": {"_id": "p2", "text": "t2"},
                               "negatives": [{"_id": "n1", "text": "tn1"}]}) + "\n")
    rows = load_rows(f)
    assert rows[0].other_pos_ids == ("p2",) and rows[1].other_pos_ids == ()
    assert known_positives(rows) == {"a": {"p1", "p2"}, "b": {"p2"}}
    out, _ = fit_negatives(rows, 1, seed=0)
    assert out[0].other_pos_ids == ("p2",)
    assert out[0].neg_ids == ["n1"]  # the pool is p1, p2, n1: p1 and p2 are positives of "a"


# ---------------------------------------------------------------------------------------------- stage


def test_training_lowers_loss_and_beats_the_base_model(trained):
    efr, ws, manifest = trained
    out = ws.stage_dir("train")
    rows = curve(out)
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == manifest["counts"]["steps"] > 4
    k = max(2, len(losses) // 4)
    assert sum(losses[-k:]) / k < 0.7 * sum(losses[:k]) / k, losses

    # Outputs: a loadable sentence-transformers folder, the curve and its plot, the counts.
    from sentence_transformers import SentenceTransformer

    tuned = SentenceTransformer(str(out / "model"), device="cpu")
    assert tuned.encode(["hello"]).shape == (1, 384)
    # ... in the classic layout that other readers load (tests/unit/eft/test_model_folder.py)
    from eft.model_folder import layout_problems

    assert layout_problems(out / "model") == [] and manifest["details"]["modelLayout"] == "classic sentence-transformers"
    assert tuned.max_seq_length == 32
    assert (out / "training_curve.png").stat().st_size > 1000
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "val_loss", "val_ndcg@10", "train_seconds"}
    # Every step's finishing time: non-decreasing, the last one the stage's whole training time.
    t = [float(r["train_seconds"]) for r in rows if r["loss"]]
    assert all(b >= a for a, b in zip(t, t[1:])) and t[0] > 0
    assert abs(t[-1] - manifest["details"]["trainSeconds"]) <= 0.1 + 0.01 * t[-1]
    assert manifest["details"]["compile"] == {"setting": "auto", "enabled": False,
                                              "reason": manifest["details"]["compile"]["reason"]}
    assert "not on a GPU" in manifest["details"]["compile"]["reason"]
    c = manifest["counts"]
    assert c["rows"] == len(TRAIN_UNITS) * 3 + 2 and c["batch_size"] == 16 and c["epochs"] == 2
    assert c["best_epoch"] in (1, 2) and c["rows_per_second"] > 0
    assert manifest["details"]["batchSize"] == {"requested": 16, "chosen": 16, "method": "spec"}
    val = [r for r in rows if r["val_ndcg@10"]]
    assert [int(float(r["epoch"])) for r in val] == [0, 1, 2]  # base model, then every epoch

    # On unseen units (the held-out test split), via the evaluate code's metric functions.
    from eft.models import load_sentence_model

    test = metrics.load_beir(ws.stage_dir("prepare") / "beir", "test")
    base = load_sentence_model(efr.spec.base_model, device="cpu")
    got = {}
    for name, model in (("base", base), ("tuned", tuned)):
        r = metrics.retrieve(model, test, top_k=10)
        got[name] = metrics.score(test.qrels, r.results, [10])["ndcg@10"]
    assert got["tuned"] > got["base"] + 0.05, got


def test_kill_and_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    efr, _, full = trained
    ws = write_prepare(tmp_path / "ws")
    with pytest.raises(StageFailed, match="stopped after step 3"):
        execute_stage(efr, ws, "train", settings=StageSettings(checkpoint_steps=2, stop_after_steps=3))
    assert ws.manifest("train") is None
    ckpt = torch.load(ws.root / ".work" / "train" / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["step"] == 2  # the kill after step 3 lost step 3 only

    # The resumed half tokenizes per batch in a worker process instead of using the token cache that the
    # first half (and the uninterrupted run) used: the features, hence the losses, must be the same.
    resumed = execute_stage(efr, ws, "train", settings=StageSettings(checkpoint_steps=2, token_cache=False,
                                                                     train_workers=1))
    assert resumed["details"]["tokenizerWorkers"] == 1
    assert resumed["details"]["tokenCache"] == {"enabled": False}
    assert full["details"]["tokenCache"]["enabled"] is True
    assert full["details"]["tokenCache"]["texts"] < full["details"]["tokenCache"]["textSlots"]
    assert resumed["details"]["resumedFromStep"] == 2
    assert resumed["counts"]["steps"] == full["counts"]["steps"]
    assert not (ws.root / ".work" / "train").exists()  # scratch cleared on success
    # Same seeds, same data order, RNG restored: the resumed run retraces the uninterrupted one.
    a = [float(r["loss"]) for r in curve(ws.stage_dir("train")) if r["loss"]]
    b = [float(r["loss"]) for r in curve(trained[1].stage_dir("train")) if r["loss"]]
    assert len(a) == len(b)
    assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_training_cuts_texts_at_the_training_length_and_scores_and_ships_at_the_full_one(tmp_path, monkeypatch):
    """training.maxSeqLength cuts what the training steps see; validation and the shipped model use
    baseModel.maxSeqLength."""
    from sentence_transformers import SentenceTransformer

    from eft.stages.train import trainer as trainer_module

    tail = " It sits in rack four of the north hall, next to the old cooling unit and the spare fans."
    runs = {}
    for length in (16, None):
        ws = write_prepare(tmp_path / f"ws-{length}")
        path = ws.stage_dir("prepare") / "train.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r["positive"]["text"] += tail  # every passage well over 16 tokens
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        seen: list[int] = []  # the model's length at each validation

        def recording(model, *args, _real=trainer_module.validate, _seen=seen):
            _seen.append(model.max_seq_length)
            return _real(model, *args)

        monkeypatch.setattr(trainer_module, "validate", recording)
        training = {"epochs": 1, "maxSteps": 3} | ({"maxSeqLength": length} if length else {})
        manifest = execute_stage(make_spec(**training), ws, "train")
        monkeypatch.undo()
        runs[length] = manifest["details"]["tokenCache"]
        assert manifest["details"]["maxSeqLength"] == 32 and seen and set(seen) == {32}
        assert manifest["details"]["trainMaxSeqLength"] == (length or 32)
        assert SentenceTransformer(str(ws.stage_dir("train") / "model"), device="cpu").max_seq_length == 32
    cut, full = runs[16], runs[None]
    assert cut["enabled"] and cut["texts"] == full["texts"]
    assert cut["tokens"] <= 16 * cut["texts"] < full["tokens"]


def test_gradient_checkpointing_still_trains():
    from eft.stages.train.modeling import enable_gradient_checkpointing

    from eft.models import load_sentence_model

    model = load_sentence_model(device="cpu")
    assert enable_gradient_checkpointing(model)
    model.train()
    out = model(model.preprocess(["what is the zorblat of unit 1?", "The glimmeric of unit 1 is 47."]))
    out["sentence_embedding"].sum().backward()
    layers = [p for n, p in model.named_parameters() if ".encoder.layer." in n]
    assert layers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers)


def test_bad_input_fails_with_one_line(tmp_path):
    efr = make_spec()
    ws = Workspace(tmp_path / "empty")
    with pytest.raises(StageInputMissing, match="prepare"):
        execute_stage(efr, ws, "train")
    ws = write_prepare(tmp_path / "ws")
    (ws.stage_dir("prepare") / "train.jsonl").write_text("")
    with pytest.raises(StageFailed, match="no training rows") as e:
        execute_stage(efr, ws, "train")
    assert "\n" not in e.value.message
    (ws.stage_dir("prepare") / "train.jsonl").write_text('{"qid": "a", "query": "x"}\n')
    with pytest.raises(StageFailed, match="line 1: not a training row"):
        execute_stage(efr, ws, "train")


# ---------------------------------------------------------------------------------------------- multi-process

_RANK_SCRIPT = r'''
import sys, zlib, torch
torch.set_num_threads(1)
from eft.stages.train import modeling
from eft.stages.train.batches import BatchTensors
# The gather's arithmetic is compared exactly, so in fp32 even on a CPU that would train under bf16 autocast.
modeling.cpu_has_native_bf16 = lambda: False
from eft.stages.train.distributed import (DistInfo, allreduce_gradients, allreduce_mean, setup_distributed,
                                          teardown_distributed)
from eft.stages.train.loss import LossConfig, batch_loss

def feat(t):
    return torch.randn(16, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))

class Toy(torch.nn.Module):
    """Stands in for a SentenceTransformer: preprocess(texts) -> features, forward -> sentence_embedding."""
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)))
            self.lin.bias.zero_()
    def preprocess(self, texts):
        return {"x": torch.stack([feat(t) for t in texts])}
    def forward(self, f):
        return {"sentence_embedding": self.lin(f["x"])}

N_NEG = 2
# 8 rows; rows 1 and 5 share a positive passage (id 1), on different ranks when split 4 + 4.
POS = [0, 1, 2, 3, 4, 1, 6, 7]
def batch(rows):
    return BatchTensors(
        queries=[f"q{i}" for i in rows],
        passages=[f"p{POS[i]}" for i in rows] + [f"n{i}-{j}" for i in rows for j in range(N_NEG)],
        row_q=torch.tensor(rows),
        pids=torch.tensor([POS[i] for i in rows] + [100 + 10 * i + j for i in rows for j in range(N_NEG)]))

n_ids = 1000
cfg = LossConfig(scale=20.0, n_neg=N_NEG, in_batch=True,
                 known_pairs=torch.tensor(sorted(q * n_ids + POS[q] for q in range(8))), n_ids=n_ids)
model = Toy()
mode, out = sys.argv[1], sys.argv[2]
if mode == "single":
    info = DistInfo()
    rows = list(range(8))
else:
    info = setup_distributed("cpu")
    rows = list(range(info.rank * 4, info.rank * 4 + 4))
loss = batch_loss(model, batch(rows), cfg, info)
loss.backward()
allreduce_gradients(list(model.parameters()), info)
mean_loss = float(allreduce_mean(loss.detach(), info))
if info.rank == 0:
    torch.save({"loss": mean_loss, "grad": model.lin.weight.grad.clone()}, out)
del loss  # the stage's loss is out of scope when it leaves the group; the module-level one must go too
teardown_distributed(info)
'''


def test_cross_rank_gather_matches_one_big_batch(tmp_path):
    """Two gloo processes, 4 rows each, give the loss and gradients of one process with all 8 rows:
    the autograd all_gather spans the global batch and the false-negative mask works across ranks."""
    import socket
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    from tests.support.paths import REPO as repo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base_env = {**os.environ, "PYTHONPATH": str(repo), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), "dist", str(tmp_path / "dist.pt")],
                              env={**base_env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        single_env = {**os.environ, "PYTHONPATH": str(repo), "WORLD_SIZE": "1"}
        subprocess.run([sys.executable, str(script), "single", str(tmp_path / "single.pt")], env=single_env,
                       check=True, timeout=120)
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    single = torch.load(tmp_path / "single.pt")
    dist = torch.load(tmp_path / "dist.pt")
    assert dist["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert torch.allclose(dist["grad"], single["grad"], atol=1e-6), (dist["grad"] - single["grad"]).abs().max()


def test_auto_batch_size_leaves_enough_steps_per_epoch():
    from eft.stages.train import batch_size as bs
    from eft.stages.train.distributed import DistInfo
    from eft.stages.train.loss import LossConfig

    assert bs.steps_cap(8_500) == 128  # NFCorpus-sized epoch: 8,500 rows // 50 steps = 170 -> 128
    assert bs.steps_cap(100_000) == 1024  # 2,000 rows per step at most -> 1,024
    assert bs.steps_cap(100) == bs.MIN_AUTO_BATCH  # tiny sets still get a useful batch
    assert bs.steps_cap(8_500, world_size=4) == 32  # per rank
    info = DistInfo(device="cpu")
    cfg = LossConfig(scale=50.0, n_neg=1, in_batch=True, known_pairs=torch.zeros(0, dtype=torch.long), n_ids=1)
    kw = dict(n_neg=1, max_len=16, query_len=8, cfg=cfg, info=info)
    assert bs.choose_batch_size("auto", None, max_rows=10_000, rows_per_epoch=10_000, **kw).batch_size == 64
    small = bs.choose_batch_size("auto", None, max_rows=10_000, rows_per_epoch=600, **kw)
    assert small.batch_size == 8 and "capped" in small.method
    assert bs.choose_batch_size(64, None, max_rows=10_000, rows_per_epoch=600, **kw).batch_size == 64  # explicit wins


def test_train_stage_runs_under_torchrun_with_two_ranks(tmp_path):
    """The whole stage as a multi-GPU pod runs it (torchrun, here two CPU ranks on gloo): both ranks train
    in step on a global batch, rank 0 alone publishes, and both processes exit cleanly."""
    import shutil
    import socket
    import subprocess
    import sys

    import yaml

    ws = write_prepare(tmp_path / "ws")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune",
                                         "metadata": {"name": "t"}, "spec": {
        "training": {"epochs": 1, "learningRate": 1e-4, "batchSize": 8, "temperature": 0.05, "seed": 7},
        "mining": {"negatives": 2}, "baseModel": {"maxSeqLength": 32}}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EFT_DEVICE": "cpu"}
    r = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
                        "-m", "eft.cli", "stage", "train", "--spec", str(spec_path), "--workspace", str(ws.root)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "terminate called" not in r.stderr
    m = ws.manifest("train")
    assert m["status"] == "succeeded"
    assert m["details"]["worldSize"] == 2 and m["details"]["globalBatchSize"] == 16
    assert (ws.stage_dir("train") / "model" / "model.safetensors").is_file()
    losses = [float(c["loss"]) for c in curve(ws.stage_dir("train")) if c["loss"]]
    assert len(losses) == m["counts"]["steps"] > 0


def test_out_of_memory_fails_with_advice_not_a_traceback(tmp_path, monkeypatch):
    from eft.stages.train import trainer

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.66 GiB. GPU 0 has a total capacity")

    monkeypatch.setattr(trainer, "batch_loss", oom)  # where the training step looks it up
    ws = write_prepare(tmp_path / "ws")
    with pytest.raises(StageFailed) as err:
        execute_stage(make_spec(epochs=1), ws, "train")
    msg = err.value.message
    assert "out of GPU memory" in msg and "CUDA out of memory" in msg and "batchSize 16" in msg
    assert "gradientCheckpointing" in msg and "\n" not in msg
    assert ws.manifest("train") is None
