"""The one list of RBAC rules the operator needs (no wildcard verbs or resources).

``cluster_role_rules()`` is what the Helm chart's ClusterRole must contain (tests compare them) and what
the operator tests bind to the operator's ServiceAccount. Why each rule exists:

* embeddingfinetunes: watched (list/watch/get); the operator never patches the resource itself.
* embeddingfinetunes/status: the only write to the resource (JSON patch of ``status``).
* embeddingfinetunes/finalizers: ``update`` lets children carry ``blockOwnerDeletion: true`` owner
  references where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift).
* jobs: one per stage; deleted when superseded by a re-run.
* pods: watched for the stage pods' termination messages (metrics, failure reasons).
* configmaps: the spec file mounted into the stage pods; updated when the spec changes.
* persistentvolumeclaims: the workspace; ``patch`` moves its owner reference with retentionPolicy.
* services: the serving Service and the headless rendezvous Service of multi-node training.
* deployments: the serving Deployment.
* poddisruptionbudgets: the serving pods' budget (maxUnavailable 1) while more than one can run; deleted
  when back to one replica or serving is disabled.
* horizontalpodautoscalers: serving.autoscaling's autoscaler of the serving Deployment; deleted when off.
* networkpolicies: serving.networkPolicy's ingress policy on the serving pods; deleted when off.
* events: one per transition (core/v1 Events).
"""

from __future__ import annotations

from eft.spec import API_GROUP, PLURAL

WATCH = ["get", "list", "watch"]


def cluster_role_rules() -> list[dict[str, list[str]]]:
    return [
        {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": list(WATCH)},
        {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
        {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": [*WATCH, "create", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": list(WATCH)},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": [*WATCH, "create", "update"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": [*WATCH, "create", "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": [*WATCH, "create", "update", "delete"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*WATCH, "create", "update", "delete"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
         "verbs": [*WATCH, "create", "update", "delete"]},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
         "verbs": [*WATCH, "create", "update", "delete"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": [*WATCH, "create", "update", "delete"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def cluster_role(name: str = "eft-operator") -> dict:
    """A ClusterRole manifest with exactly :func:`cluster_role_rules`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "eft"}},
        "rules": cluster_role_rules(),
    }
