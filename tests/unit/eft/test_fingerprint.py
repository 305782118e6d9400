"""Stage fingerprints: a spec change re-runs exactly the stages it affects, the same way for the local runner,
the operator's Job names and the train checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest

from eft import __version__
from eft.fingerprint import (checkpoint_key, job_fingerprints, restart_stage, restart_table, section_hash,
                             workspace_fingerprint)
from eft.spec import STAGES, EmbeddingFinetuneSpec
from eft.stage_defs import STAGE_DEFS
from tests.unit.operator.factories import efr, parsed

# One change per section a stage depends on; each must re-run that stage everywhere.
CHANGES = {
    "training": {"training": {"epochs": 7}},
    "mining": {"mining": {"negatives": 2}},
    "split": {"split": {"test": 0.2}},
    "evaluation": {"evaluation": {"k": [1, 10]}},
    "export": {"export": {"onnx": {"int8": False}}},
    "sdg": {"sdg": {"questionsPerChunk": 5}},
    "corpus.chunking": {"corpus": {"chunking": {"maxTokens": 128}}},
}


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


@pytest.mark.parametrize("section", sorted(CHANGES))
def test_the_runner_and_the_operator_see_the_same_changes(section):
    """The local fingerprint's spec hash and the Job fingerprint change for exactly the same stages."""
    base, changed = parsed(efr()), parsed(efr(CHANGES[section]))
    jobs_a, jobs_b = job_fingerprints(base), job_fingerprints(changed)
    for stage in STAGES:
        local_changed = (workspace_fingerprint(base, stage, {})["spec"]
                         != workspace_fingerprint(changed, stage, {})["spec"])
        own_section = any(sec == section or sec.startswith(section + ".") or section.startswith(sec + ".")
                          for sec in STAGE_DEFS[stage].sections)
        assert local_changed == own_section, (stage, section)
        if local_changed:  # the operator re-runs it too (and, chained, everything downstream)
            assert jobs_a[stage] != jobs_b[stage], (stage, section)


def test_a_gate_dataset_reruns_prepare_only_when_it_changes_the_test_fraction():
    """An unset split.test resolves from where the gate is judged: naming a human-labelled set empties the synthetic
    test split, so prepare re-runs; with split.test set, only evaluate does."""
    human = {"evaluation": {"datasets": [{"name": "h", "path": "h"}]}}
    base, gated = job_fingerprints(parsed(efr())), job_fingerprints(parsed(efr(human)))
    assert [s for s in STAGES if gated[s] != base[s]] == ["prepare", "train", "evaluate", "export"]
    fixed = {"split": {"test": 0.1}}
    base, gated = job_fingerprints(parsed(efr(fixed))), job_fingerprints(parsed(efr({**fixed, **human})))
    assert [s for s in STAGES if gated[s] != base[s]] == ["evaluate", "export"]


def test_workspace_fingerprint_carries_the_version_upstream_outputs_and_external_inputs():
    spec = EmbeddingFinetuneSpec()
    fp = workspace_fingerprint(spec, "evaluate", {"prepare": "p1", "train": "t1", "ingest": "ignored"},
                               lambda s: "corpus-hash")
    assert fp == {"spec": section_hash(spec, STAGE_DEFS["evaluate"].sections), "eft": __version__,
                  "upstream": {"prepare": "p1", "train": "t1"}, "inputs": "corpus-hash"}
    assert "inputs" not in workspace_fingerprint(spec, "evaluate", {})
    assert workspace_fingerprint(spec, "evaluate", {})["upstream"] == {"prepare": None, "train": None}


def test_job_fingerprints_leave_the_version_out_and_see_where_cluster_inputs_live(monkeypatch):
    """An operator upgrade must not rename (and so re-run) every finished stage Job."""
    spec = EmbeddingFinetuneSpec()
    before = job_fingerprints(spec)
    monkeypatch.setattr("eft.__version__", "99.0.0")
    assert job_fingerprints(spec) == before
    claim = parsed(efr({"corpus": {"existingClaim": "docs"}}))
    assert job_fingerprints(claim)["ingest"] != before["ingest"]
    # locally the corpus folder itself is hashed (input_fingerprint), not where a cluster would mount it from
    assert workspace_fingerprint(claim, "ingest", {})["spec"] == workspace_fingerprint(spec, "ingest", {})["spec"]


def test_checkpoint_key_is_the_train_stage_sections_plus_the_run():
    spec = EmbeddingFinetuneSpec()
    key = checkpoint_key(spec, rows="abc", world=1)
    assert checkpoint_key(spec, rows="abc", world=1) == key
    assert checkpoint_key(spec, rows="abd", world=1) != key
    assert checkpoint_key(spec, rows="abc", world=2) != key
    assert checkpoint_key(parsed(efr({"training": {"epochs": 7}})), rows="abc", world=1) != key
    assert checkpoint_key(parsed(efr({"serving": {"replicas": 3}})), rows="abc", world=1) == key
    assert checkpoint_key(parsed(efr({"export": {"onnx": {"int8": False}}})), rows="abc", world=1) == key


def test_a_field_added_later_changes_no_fingerprint_while_unset():
    """An operator upgrade that adds a spec field must not re-run finished fine-tunes: unset, the field is left
    out of the hash (the section dumps as before it existed); set, it re-runs its stage like any other."""
    from eft.fingerprint import ADDED_FIELDS

    spec = parsed(efr({}))
    for section, field in ADDED_FIELDS:
        block = getattr(spec, section)
        assert field in type(block).model_fields and getattr(block, field) is None
        before = block.model_dump(mode="json")
        del before[field]
        blob = json.dumps({section: before}, sort_keys=True, separators=(",", ":"))
        assert section_hash(spec, (section,)) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    cut = parsed(efr({"training": {"maxSeqLength": 128}}))
    assert restart_stage(spec, cut) == "train"
    assert job_fingerprints(spec)["ingest"] == job_fingerprints(cut)["ingest"]
    assert job_fingerprints(spec)["train"] != job_fingerprints(cut)["train"]


def test_secret_references_do_not_make_a_stage_stale():
    a = parsed(efr({"sdg": {"backend": "openai", "openai": {"apiKeySecret": {"name": "k1", "key": "key"}}}}))
    b = parsed(efr({"sdg": {"backend": "openai", "openai": {"apiKeySecret": {"name": "k2", "key": "key"}}}}))
    assert job_fingerprints(a) == job_fingerprints(b)
