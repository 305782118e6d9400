"""Stage fingerprints: a spec change re-runs exactly the stages it affects."""


from __future__ import annotations

from eft.fingerprint import job_fingerprints, restart_stage, restart_table
from eft.spec import STAGES
from tests.unit.operator.factories import efr, parsed


def test_fingerprints_rerun_only_affected_stages():
    base = parsed(efr())
    fp = job_fingerprints(base)
    assert len(set(fp.values())) == len(STAGES)
    assert job_fingerprints(parsed(efr())) == fp  # deterministic
    t = job_fingerprints(parsed(efr({"training": {"epochs": 7}})))
    assert [s for s in STAGES if t[s] != fp[s]] == ["train", "evaluate", "export"]
    e = job_fingerprints(parsed(efr({"export": {"onnx": {"int8": False}}})))
    assert [s for s in STAGES if e[s] != fp[s]] == ["export"]
    ing = job_fingerprints(parsed(efr({"corpus": {"chunking": {"maxTokens": 128}}})))
    assert all(ing[s] != fp[s] for s in STAGES)
    for unrelated in ({"serving": {"replicas": 3}}, {"scheduling": {"backoffLimit": 5}}, {"suspend": True},
                      {"queueName": "q"}, {"workspace": {"retentionPolicy": "Delete"}}):
        assert job_fingerprints(parsed(efr(unrelated))) == fp, unrelated
    r = job_fingerprints(base, "token-1", "train")
    assert [s for s in STAGES if r[s] != fp[s]] == ["train", "evaluate", "export"]
    assert job_fingerprints(base, "token-1")["ingest"] != fp["ingest"]
    assert restart_stage(base, parsed(efr({"split": {"test": 0.2}}))) == "prepare"
    assert restart_stage(base, parsed(efr({"serving": {"port": 1234}}))) is None
    table = dict(restart_table())
    assert table["corpus.path"] == "ingest" and table["training"] == "train" and table["export"] == "export"
