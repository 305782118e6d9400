"""What makes a stage's output out of date: one hash of the spec sections a stage depends on (the table in
eft.stage_defs), composed three ways.

* ``workspace_fingerprint`` (local runner, `eft stage`): the sections, the eft version, the upstream
  stages' output digests and the stage's external inputs. A stage is up to date when its manifest holds it.
* ``job_fingerprints`` (operator): the sections, chained through the upstream stages' fingerprints, plus a
  retrain token. It names the stage's Job, so it must be computable before any output exists; the eft
  version is left out on purpose: upgrading the operator must not re-run every finished fine-tune in the
  cluster (the stage pod still checks its own workspace fingerprint, version included).
* ``checkpoint_key`` (train): the train stage's sections plus what a resumable run must also share (the
  training rows, the world size), so a checkpoint is never resumed under another spec or data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from pydantic import BaseModel

from eft.spec import STAGES, EmbeddingFinetuneSpec
from eft.stage_defs import STAGE_DEFS


# Fields added after resources were created, as (section, field): left out of the hash while unset, since
# unset means what a stored spec without the field always meant, so an operator upgrade re-runs nothing.
ADDED_FIELDS = frozenset({("training", "max_seq_length")})


def _without_unset_additions(section: str, value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if not (v is None and (section, k) in ADDED_FIELDS)}


def _without_secrets(value: Any) -> Any:
    """Drop Secret references (``*_secret`` fields): a rotated credential changes no stage output, so it
    must not make a stage out of date."""
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if not k.endswith("_secret")}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def section_hash(spec: EmbeddingFinetuneSpec, sections: tuple[str, ...]) -> str:
    """Stable hash of the named spec sections (dotted snake_case paths)."""
    data: dict[str, Any] = {}
    for sec in sections:
        obj: Any = spec
        for part in sec.split("."):
            obj = getattr(obj, part)
        dumped = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        data[sec] = _without_secrets(_without_unset_additions(sec, dumped))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_spec_hash(spec: EmbeddingFinetuneSpec, stage: str, *, cluster: bool = False) -> str:
    return section_hash(spec, STAGE_DEFS[stage].all_sections(cluster))


def workspace_fingerprint(spec: EmbeddingFinetuneSpec, stage: str, upstream_digests: dict[str, str | None],
                          external_inputs: Callable[[EmbeddingFinetuneSpec], str] | None = None) -> dict[str, Any]:
    """The local fingerprint: ``upstream_digests`` are the upstream stages' ``outputsDigest`` (None: missing);
    ``external_inputs`` hashes what the stage reads from outside the workspace (the corpus folder)."""
    from eft import __version__

    fp: dict[str, Any] = {"spec": stage_spec_hash(spec, stage), "eft": __version__,
                          "upstream": {u: upstream_digests.get(u) for u in STAGE_DEFS[stage].upstream}}
    if external_inputs is not None:
        fp["inputs"] = external_inputs(spec)
    return fp


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def job_fingerprints(spec: EmbeddingFinetuneSpec, retrain_token: str | None = None,
                     retrain_from: str | None = None) -> dict[str, str]:
    """Every stage's operator fingerprint (8 hex digits, part of its Job name); a retrain token changes the
    fingerprint of ``retrain_from`` (default: the first stage) and so of everything downstream of it."""
    fps: dict[str, str] = {}
    start = retrain_from if retrain_from in STAGES else STAGES[0]
    for s in STAGES:
        payload: dict[str, Any] = {"spec": stage_spec_hash(spec, s, cluster=True),
                                   "upstream": {u: fps[u] for u in STAGE_DEFS[s].upstream}}
        if retrain_token and s == start:
            payload["retrain"] = retrain_token
        fps[s] = short_hash(json.dumps(payload, sort_keys=True), 8)
    return fps


def restart_stage(old: EmbeddingFinetuneSpec, new: EmbeddingFinetuneSpec) -> str | None:
    """The earliest stage a spec change re-runs (None: no stage re-runs)."""
    a, c = job_fingerprints(old), job_fingerprints(new)
    return next((s for s in STAGES if a[s] != c[s]), None)


def restart_table() -> list[tuple[str, str]]:
    """(field, earliest stage re-run) for every spec section a stage depends on (for the docs)."""
    rows: dict[str, str] = {}
    for s in STAGES:
        for sec in STAGE_DEFS[s].all_sections(cluster=True):
            rows.setdefault(sec, s)
    return sorted(rows.items(), key=lambda kv: (STAGES.index(kv[1]), kv[0]))


def checkpoint_key(spec: EmbeddingFinetuneSpec, **run: Any) -> str:
    """Identity of a resumable training run: the train stage's spec sections plus ``run`` (the training
    rows' digest, the world size, anything else a resumed run must share)."""
    return json.dumps({"spec": stage_spec_hash(spec, "train"), **run}, sort_keys=True)
