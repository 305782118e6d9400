"""The children every stage needs: the spec ConfigMap and the workspace claim."""

from __future__ import annotations

from typing import Any

from eft.controller import builders as b
from eft.controller.actions import Changes
from eft.controller.children import Children, live
from eft.spec import EmbeddingFinetuneSpec


def ensure_infrastructure(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec,
                          children: Children) -> None:
    changes.ensure(b.build_spec_configmap(efr, spec), live(children.configmaps, b.spec_configmap_name(
        efr["metadata"]["name"])))
    if not spec.workspace.existing_claim:
        ensure_workspace_claim(changes, efr, spec, children)


def ensure_workspace_claim(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec,
                           children: Children) -> None:
    """Create the claim, or move its owner reference to follow workspace.retentionPolicy.

    A claim without a controller is ours to reuse (a retained workspace); one controlled by another
    object is not.
    """
    desired = b.build_workspace_claim(efr, spec)
    claim = live(children.claims, desired["metadata"]["name"])
    if claim is None:
        changes.create(desired)
    elif claim.get("owner") not in (None, changes.uid):
        changes.blockers.append(f"PersistentVolumeClaim {claim['name']} belongs to another object (a deleted "
                                "EmbeddingFinetune of the same name?)")
    else:
        have = claim.get("owners") or []
        want = b.desired_claim_owners(efr, spec, have)
        if _owners_key(want) != _owners_key(have):
            changes.set_owners("PersistentVolumeClaim", claim, want)


def _owners_key(refs: list[dict[str, Any]]) -> list[tuple]:
    return sorted((r.get("uid"), bool(r.get("controller"))) for r in refs)
