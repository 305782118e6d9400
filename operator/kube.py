"""A thin, synchronous Kubernetes REST layer over the official client's ApiClient (auth, TLS, token
refresh) that speaks plain JSON dicts; the controller calls it from worker threads."""

from __future__ import annotations

import json
import threading
from typing import Any

from eft.spec import API_GROUP, API_VERSION, KIND, PLURAL

# kind -> (API prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    KIND: (f"/apis/{API_GROUP}/{API_VERSION}", PLURAL),
}

FIELD_MANAGER = "eft-operator"


class KubeError(Exception):
    def __init__(self, status: int, reason: str, body: Any = None):
        self.status = status
        self.reason = reason
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else (body or reason)
        super().__init__(f"{status} {reason}: {msg}")


def load_api_client(kubeconfig: str | None = None):
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig:
            raise config.ConfigException("explicit kubeconfig")
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 16
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api_client=None):
        self.api = api_client or load_api_client()
        self._lock = threading.Lock()
        self.requests = 0  # API requests made (for the benchmark)

    # ---- raw

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self.api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()) or None,
            header_params=headers, body=body, auth_settings=["BearerToken"])
        with self._lock:
            self.requests += 1
        resp = self.api.call_api(*params, _request_timeout=timeout)
        data = resp.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode(errors="replace") if isinstance(data, bytes) else data
        if not 200 <= resp.status <= 299:
            raise KubeError(resp.status, resp.reason or "", parsed)
        return parsed

    @staticmethod
    def path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        p = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        if name:
            p += f"/{name}"
        if sub:
            p += f"/{sub}"
        return p

    # ---- verbs

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        m = obj["metadata"]
        return self.request("POST", self.path(obj["kind"], m.get("namespace")), obj,
                            query={"fieldManager": FIELD_MANAGER})

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self.request("GET", self.path(kind, namespace, name))

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        m = obj["metadata"]
        return self.request("PUT", self.path(obj["kind"], m.get("namespace"), m["name"]), obj,
                            query={"fieldManager": FIELD_MANAGER})

    def patch(self, kind: str, namespace: str, name: str, patch: Any, sub: str | None = None,
              content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        return self.request("PATCH", self.path(kind, namespace, name, sub), patch, content_type=content_type,
                            query={"fieldManager": FIELD_MANAGER})

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None,
               propagation: str = "Background") -> Any:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        return self.request("DELETE", self.path(kind, namespace, name), body)

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        q = {"labelSelector": label_selector} if label_selector else None
        return (self.request("GET", self.path(kind, namespace), query=q) or {}).get("items") or []
