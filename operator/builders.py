"""Pure builders of every object the operator owns (no API calls, unit-tested).

Each builder takes the EmbeddingFinetune body (a dict, as the API returns it), its parsed spec and the
operator settings, and returns a plain Kubernetes manifest (dict). Names are deterministic, so a
restarted operator finds what it created; every object carries the common labels and an owner
reference to the EmbeddingFinetune (the workspace claim only under retentionPolicy Delete).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

import yaml

from eft.fingerprint import short_hash
from eft.pipeline import EXIT_PERMANENT
from eft.stage_defs import STAGE_DEFS
from eft.spec import API_GROUP, API_VERSION, KIND, EmbeddingFinetuneSpec
from eft.controller.settings import Settings

# ----------------------------------------------------------------------------- labels & names

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "eft-operator"
STAGE_LABEL = f"{API_GROUP}/stage"
FINGERPRINT_LABEL = f"{API_GROUP}/fingerprint"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

HASH_ANNOTATION = f"{API_GROUP}/desired-hash"
DIGEST_ANNOTATION = f"{API_GROUP}/model-digest"
RETRAIN_ANNOTATION = f"{API_GROUP}/retrain"
RETRAIN_FROM_ANNOTATION = f"{API_GROUP}/retrain-from"

JOB_COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

SPEC_DIR = "/etc/eft"
SPEC_FILE = f"{SPEC_DIR}/spec.yaml"
WORKSPACE_DIR = "/workspace"
CORPUS_DIR = "/eft/corpus"
QUERIES_DIR = "/eft/queries"
BASE_MODEL_DIR = "/eft/base-model"
EXPORT_DIR = f"{WORKSPACE_DIR}/export"
TUNED_MODEL_DIR = f"{WORKSPACE_DIR}/train/model"
HF_HOME = f"{WORKSPACE_DIR}/.cache/huggingface"
GPU_RESOURCE = "nvidia.com/gpu"
RENDEZVOUS_PORT = 29500

# Job names leave room for "-<index>" (Indexed Job pod hostnames are DNS labels, <= 63).
JOB_NAME_MAX = 56
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def fit_name(base: str, suffix: str, limit: int = 63) -> str:
    """``<base>-<suffix>`` within ``limit`` characters: base is cut and tagged with its hash when needed."""
    name = f"{base}-{suffix}" if suffix else base
    if len(name) <= limit:
        return name
    tag = short_hash(base, 5)
    keep = limit - len(suffix) - len(tag) - 2
    return f"{base[:keep].rstrip('-')}-{tag}-{suffix}" if suffix else f"{base[:limit - 6].rstrip('-')}-{tag}"


def dns1035(name: str) -> str:
    """Service names must start with a letter."""
    if _DNS1035.match(name):
        return name
    return fit_name("eft-" + name, "", 63)


def workspace_claim_name(name: str) -> str:
    return fit_name(name, "workspace")


def spec_configmap_name(name: str) -> str:
    return fit_name(name, "spec")


def job_name(name: str, stage: str, fingerprint: str) -> str:
    return fit_name(name, f"{stage}-{fingerprint}", JOB_NAME_MAX)


def serving_name(name: str) -> str:
    return dns1035(fit_name(name, "serve"))


def rendezvous_service_name(job: str) -> str:
    return dns1035(job)


def common_labels(name: str, component: str | None = None, stage: str | None = None) -> dict[str, str]:
    labels = {NAME_LABEL: "eft", INSTANCE_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}
    if component:
        labels[COMPONENT_LABEL] = component
    if stage:
        labels[STAGE_LABEL] = stage
    return labels


def serving_selector(name: str) -> dict[str, str]:
    return {NAME_LABEL: "eft", INSTANCE_LABEL: name, COMPONENT_LABEL: "serving"}


def owner_reference(efr: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": efr["metadata"]["name"],
        "uid": efr["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_hash(obj: dict[str, Any]) -> str:
    """Hash of a desired manifest (without its own hash annotation): detects when an update is due."""
    clean = json.loads(json.dumps(obj))
    meta = clean.get("metadata", {})
    meta.get("annotations", {}).pop(HASH_ANNOTATION, None)
    if "annotations" in meta and not meta["annotations"]:
        del meta["annotations"]
    return short_hash(json.dumps(clean, sort_keys=True, separators=(",", ":")), 16)


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    obj.setdefault("metadata", {}).setdefault("annotations", {})[HASH_ANNOTATION] = object_hash(obj)
    return obj


def _meta(efr: dict[str, Any], name: str, labels: dict[str, str], owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": efr["metadata"]["namespace"], "labels": labels}
    if owned:
        meta["ownerReferences"] = [owner_reference(efr)]
    return meta


# ----------------------------------------------------------------------------- the in-pod spec

def _inside(mount: str, path: str) -> str:
    rel = path.strip()
    if rel.startswith("builtin:") or rel in ("", ".", "/", "./"):
        return mount
    return posixpath.normpath(posixpath.join(mount, rel.lstrip("/")))


def pod_spec(spec: EmbeddingFinetuneSpec) -> EmbeddingFinetuneSpec:
    """The spec as the stage pods see it: inputs on mounted volumes are rewritten to their mount paths.

    corpus.existingClaim -> the claim is mounted read-only at /eft/corpus and corpus.path becomes
    /eft/corpus/<path>; corpus.configMap -> its keys are files in /eft/corpus; baseModel.existingClaim
    -> mounted read-only at /eft/base-model and baseModel.name becomes /eft/base-model/<name>;
    queries.existingClaim / queries.configMap -> mounted read-only at /eft/queries (sdg pod) and queries.path
    becomes /eft/queries/<path>.
    URLs (s3://, gs://, https://), 'builtin:' corpora and Hugging Face ids are left as they are.
    """
    s = spec.model_copy(deep=True)
    if s.corpus.existing_claim:
        s.corpus.path = _inside(CORPUS_DIR, s.corpus.path)
        s.corpus.existing_claim = None
    elif s.corpus.config_map:
        s.corpus.path = CORPUS_DIR
        s.corpus.config_map = None
    if s.queries.path and (s.queries.existing_claim or s.queries.config_map):
        s.queries.path = _inside(QUERIES_DIR, s.queries.path)
        s.queries.existing_claim = s.queries.config_map = None
    if s.base_model.existing_claim:
        s.base_model.name = _inside(BASE_MODEL_DIR, s.base_model.name)
        s.base_model.existing_claim = None
    return s


def _add_source(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], name: str, mount_path: str,
                claim: str | None, config_map: str | None) -> None:
    """A read-only input volume (the corpus, the supplied queries): a claim or a ConfigMap, when one is named."""
    if claim:
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    elif config_map:
        volumes.append({"name": name, "configMap": {"name": config_map}})
    else:
        return
    mounts.append({"name": name, "mountPath": mount_path, "readOnly": True})


def pod_spec_document(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": efr["metadata"]["name"], "namespace": efr["metadata"]["namespace"]},
        "spec": pod_spec(spec).model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def build_spec_configmap(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any]:
    name = efr["metadata"]["name"]
    text = yaml.safe_dump(pod_spec_document(efr, spec), sort_keys=False)
    return with_hash({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(efr, spec_configmap_name(name), common_labels(name, "spec")),
        "data": {"spec.yaml": text},
    })


# ----------------------------------------------------------------------------- workspace claim

def claim_name_for(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> str:
    return spec.workspace.existing_claim or workspace_claim_name(efr["metadata"]["name"])


def build_workspace_claim(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any]:
    """The workspace PVC; owned by the EmbeddingFinetune only under retentionPolicy Delete."""
    name = efr["metadata"]["name"]
    ws = spec.workspace
    pvc_spec: dict[str, Any] = {
        "accessModes": list(ws.access_modes),
        "resources": {"requests": {"storage": ws.size}},
    }
    if ws.storage_class_name is not None:
        pvc_spec["storageClassName"] = ws.storage_class_name
    meta = _meta(efr, workspace_claim_name(name), common_labels(name, "workspace"),
                 owned=ws.retention_policy == "Delete")
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": pvc_spec}


def desired_claim_owners(efr: dict[str, Any], spec: EmbeddingFinetuneSpec,
                         current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claim's ownerReferences under the current retentionPolicy (others' references kept)."""
    uid = efr["metadata"]["uid"]
    others = [r for r in current if r.get("uid") != uid]
    if spec.workspace.retention_policy == "Delete":
        return others + [owner_reference(efr)]
    return others


# ----------------------------------------------------------------------------- stage Jobs

def stage_gpus(spec: EmbeddingFinetuneSpec, stage: str) -> int:
    """nvidia.com/gpu of a stage pod: scheduling.stages[x].gpus, else training.gpusPerNode for train and
    min(1, gpusPerNode) for the other GPU stages (gpusPerNode 0 = a CPU-only cluster), 0 for CPU stages."""
    sp = spec.scheduling.stages.get(stage)
    if sp is not None and sp.gpus is not None:
        return sp.gpus
    if not STAGE_DEFS[stage].gpu:
        return 0
    if stage == "train":
        return spec.training.gpus_per_node
    return min(1, spec.training.gpus_per_node)


def _resources(base: dict[str, Any], gpus: int, gpu_resource: str = GPU_RESOURCE) -> dict[str, Any]:
    res = json.loads(json.dumps(base or {}))
    if gpus > 0:
        res.setdefault("limits", {})[gpu_resource] = gpus
        if gpu_resource in res.get("requests", {}):
            res["requests"][gpu_resource] = gpus
    return res


def stage_resources(spec: EmbeddingFinetuneSpec, stage: str, settings: Settings) -> dict[str, Any]:
    """The spec's per-stage resources, else the operator's GPU-stage defaults for GPU stages."""
    sp = spec.scheduling.stages.get(stage)
    base = sp.resources if sp is not None and sp.resources else {}
    if not base and STAGE_DEFS[stage].gpu and stage_gpus(spec, stage) > 0:
        base = settings.gpu_stage_resources
    return _resources(base, stage_gpus(spec, stage), settings.gpu_resource)


def pod_security_context(settings: Settings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "fsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    # read-only root: every write goes to a declared volume (the workspace, /tmp, /dev/shm)
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True}


PRESTOP_DRAIN_SECONDS = 5

# HOME, Python/torch/matplotlib caches and temp files of every pod: an emptyDir, since the root is read-only.
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}



def stage_pod_failure_policy() -> dict[str, Any]:
    """Fail the Job at once on a diagnosed failure (bad input); retry crashes; never count evictions."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In",
                                              "values": [EXIT_PERMANENT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def stage_image(spec: EmbeddingFinetuneSpec, stage: str, settings: Settings) -> str:
    sp = spec.scheduling.stages.get(stage)
    return (sp.image if sp is not None and sp.image else None) or settings.image


def stage_backoff_limit(spec: EmbeddingFinetuneSpec, stage: str) -> int:
    sp = spec.scheduling.stages.get(stage)
    if sp is not None and sp.backoff_limit is not None:
        return sp.backoff_limit
    return spec.scheduling.backoff_limit


def stage_env(spec: EmbeddingFinetuneSpec, stage: str, fingerprint: str) -> tuple[list[dict], list[dict]]:
    env: list[dict[str, Any]] = [
        {"name": "EFT_STAGE", "value": stage},
        {"name": "EFT_RUN", "value": fingerprint},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env_from: list[dict[str, Any]] = []
    hf = spec.base_model.hf_token_secret
    if hf is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf.name, "key": hf.key}}})
    if stage == "sdg" and spec.sdg.openai is not None and spec.sdg.openai.api_key_secret is not None:
        ref = spec.sdg.openai.api_key_secret
        env.append({"name": spec.sdg.openai.api_key_env,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if stage == "ingest" and spec.corpus.credentials_secret:
        env_from.append({"secretRef": {"name": spec.corpus.credentials_secret}})
    return env, env_from


def stage_volumes(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, stage: str
                  ) -> tuple[list[dict], list[dict]]:
    name = efr["metadata"]["name"]
    volumes: list[dict[str, Any]] = [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": claim_name_for(efr, spec)}},
        {"name": "spec", "configMap": {"name": spec_configmap_name(name)}},
        dict(TMP_VOLUME),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "workspace", "mountPath": WORKSPACE_DIR},
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        dict(TMP_MOUNT),
    ]
    if stage == "ingest":
        _add_source(volumes, mounts, "corpus", CORPUS_DIR, spec.corpus.existing_claim, spec.corpus.config_map)
    if stage == "sdg":
        _add_source(volumes, mounts, "queries", QUERIES_DIR, spec.queries.existing_claim, spec.queries.config_map)
    if spec.base_model.existing_claim:
        volumes.append({"name": "base-model", "persistentVolumeClaim": {
            "claimName": spec.base_model.existing_claim, "readOnly": True}})
        mounts.append({"name": "base-model", "mountPath": BASE_MODEL_DIR, "readOnly": True})
    if STAGE_DEFS[stage].gpu:
        # PyTorch data loaders and NCCL need more shared memory than the container default (64 MiB).
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def stage_command(stage: str, force: bool) -> list[str]:
    cmd = ["eft", "stage", stage, "--spec", SPEC_FILE, "--workspace", WORKSPACE_DIR]
    if force:
        cmd.append("--force")
    return cmd


def is_multi_node(spec: EmbeddingFinetuneSpec, stage: str) -> bool:
    return stage == "train" and spec.training.nodes > 1


def stage_labels(name: str, stage: str, fingerprint: str) -> dict[str, str]:
    """Labels of a stage's pods (its Job's too, plus the Kueue queue)."""
    return {**common_labels(name, "stage", stage), FINGERPRINT_LABEL: fingerprint}


def stage_container(spec: EmbeddingFinetuneSpec, stage: str, fingerprint: str, settings: Settings,
                    mounts: list[dict[str, Any]], force: bool) -> dict[str, Any]:
    env, env_from = stage_env(spec, stage, fingerprint)
    container: dict[str, Any] = {
        "name": "stage",
        "image": stage_image(spec, stage, settings),
        "command": stage_command(stage, force),
        "env": env,
        "resources": stage_resources(spec, stage, settings),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    if env_from:
        container["envFrom"] = env_from
    return container


def stage_scheduling(spec: EmbeddingFinetuneSpec, settings: Settings) -> dict[str, Any]:
    """The scheduling fields of a stage pod: spec.scheduling, else the operator's defaults."""
    sch = spec.scheduling
    out: dict[str, Any] = {}
    node_selector = sch.node_selector or settings.default_node_selector
    tolerations = sch.tolerations or settings.default_tolerations
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if tolerations:
        out["tolerations"] = json.loads(json.dumps(tolerations))
    if sch.affinity:
        out["affinity"] = json.loads(json.dumps(sch.affinity))
    if sch.priority_class_name:
        out["priorityClassName"] = sch.priority_class_name
    if sch.service_account_name:
        out["serviceAccountName"] = sch.service_account_name
    if sch.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": s} for s in sch.image_pull_secrets]
    return out


def stage_pod(spec: EmbeddingFinetuneSpec, settings: Settings, container: dict[str, Any],
              volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(settings),
        "containers": [container],
        "volumes": volumes,
        **stage_scheduling(spec, settings),
    }


def stage_job_spec(spec: EmbeddingFinetuneSpec, stage: str, labels: dict[str, str],
                   pod: dict[str, Any]) -> dict[str, Any]:
    job_spec: dict[str, Any] = {
        "backoffLimit": stage_backoff_limit(spec, stage),
        "podFailurePolicy": stage_pod_failure_policy(),
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    sp = spec.scheduling.stages.get(stage)
    if sp is not None and sp.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = sp.active_deadline_seconds
    return job_spec


def rendezvous_env(master: str, nodes: int, nproc: int) -> list[dict[str, Any]]:
    """Where a training pod finds rank 0, and its own rank (the Indexed Job's completion index)."""
    rank = {"fieldRef": {"fieldPath": f"metadata.annotations['{JOB_COMPLETION_INDEX_ANNOTATION}']"}}
    return [
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "NNODES", "value": str(nodes)},
        {"name": "NODE_RANK", "valueFrom": rank},
        # torchrun reads its options from PET_* variables
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
        {"name": "PET_NODE_RANK", "valueFrom": rank},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]


def distribute(job_spec: dict[str, Any], job: str, nodes: int, gpus: int, stage: str, force: bool) -> None:
    """Turn a freshly built single-pod stage Job into an Indexed Job of ``nodes`` pods under torchrun."""
    pod = job_spec["template"]["spec"]
    container = pod["containers"][0]
    svc = rendezvous_service_name(job)
    job_spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes})
    # A retry restarts the whole group: torchrun's static rendezvous needs every rank.
    job_spec["backoffLimit"] = job_spec["backoffLimit"] * nodes
    pod["subdomain"] = svc
    container["env"] += rendezvous_env(f"{job}-0.{svc}", nodes, max(1, gpus))
    container["command"] = ["torchrun", "--module", "eft.cli", *stage_command(stage, force)[1:]]
    container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]


def build_stage_job(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, stage: str, fingerprint: str,
                    settings: Settings, force: bool = False) -> dict[str, Any]:
    """One stage's Job: `eft stage NAME --spec /etc/eft/spec.yaml --workspace /workspace`.

    Multi-node training (training.nodes > 1) is an Indexed Job whose pods find each other through a
    headless Service (:func:`build_rendezvous_service`) and run the stage under torchrun.
    """
    name = efr["metadata"]["name"]
    jname = job_name(name, stage, fingerprint)
    labels = stage_labels(name, stage, fingerprint)
    volumes, mounts = stage_volumes(efr, spec, stage)
    pod = stage_pod(spec, settings, stage_container(spec, stage, fingerprint, settings, mounts, force), volumes)
    job_spec = stage_job_spec(spec, stage, labels, pod)
    if is_multi_node(spec, stage):
        distribute(job_spec, jname, spec.training.nodes, stage_gpus(spec, stage), stage, force)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[QUEUE_LABEL] = spec.queue_name
        # Created suspended, for Kueue to unsuspend on admission: Kueue's webhook would suspend it too, but
        # without that webhook (or before it answers) the Job controller would start pods outside the quota.
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(efr, jname, job_labels),
        "spec": job_spec,
    }


def build_rendezvous_service(efr: dict[str, Any], stage: str, fingerprint: str) -> dict[str, Any]:
    """Headless Service giving Indexed training pods stable DNS names (<job>-<index>.<service>)."""
    name = efr["metadata"]["name"]
    jname = job_name(name, stage, fingerprint)
    labels = common_labels(name, "rendezvous", stage)
    labels[FINGERPRINT_LABEL] = fingerprint
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(efr, rendezvous_service_name(jname), labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: jname},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


# ----------------------------------------------------------------------------- serving

def uses_default_server(spec: EmbeddingFinetuneSpec) -> bool:
    return spec.serving.image is None and spec.serving.command is None


def served_model_name(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> str:
    return spec.serving.model_name or f"{efr['metadata']['name']}-embed"


def serving_container(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings) -> dict[str, Any]:
    sv = spec.serving
    port = sv.port
    model_dir = EXPORT_DIR if sv.backend == "onnx" else TUNED_MODEL_DIR
    default_args = ["serve", "--model", model_dir, "--host", "0.0.0.0", "--port", str(port),
                    "--served-model-name", served_model_name(efr, spec), "--backend", sv.backend]
    if sv.backend == "onnx":
        default_args += ["--variant", sv.variant]
    c: dict[str, Any] = {
        "name": "serve",
        "image": sv.image or settings.serving_image,
        "ports": [{"name": "http", "containerPort": port}],
        "resources": _resources(sv.resources, sv.gpus, settings.gpu_resource),
        "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_DIR, "readOnly": True}, dict(TMP_MOUNT)],
        "securityContext": container_security_context(),
        "readinessProbe": {"httpGet": {"path": sv.health_path, "port": "http"}, "periodSeconds": 5,
                           "failureThreshold": 3},
    }
    if sv.command is not None:
        c["command"] = list(sv.command)
    elif sv.image is None:
        c["command"] = ["eft"]
    if sv.args is not None:
        c["args"] = list(sv.args)
    elif uses_default_server(spec):
        c["args"] = default_args
    if uses_default_server(spec):
        live = {"httpGet": {"path": "/health/live", "port": "http"}}
    else:
        # A swapped-in server (NIM, text-embeddings-inference) has its own health paths: only the
        # readiness path is configurable, liveness checks that the port answers.
        live = {"tcpSocket": {"port": "http"}}
    # During a rollout the old pod keeps answering for a few seconds after it is told to stop, while the
    # Service's endpoints (kube-proxy's rules on every node) drop it; the kubelet's own sleep needs no binary.
    c["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_DRAIN_SECONDS}}}
    c["startupProbe"] = {**live, "periodSeconds": 5, "failureThreshold": 120}
    c["livenessProbe"] = {**live, "periodSeconds": 10, "failureThreshold": 3}
    env = [{"name": "HOME", "value": "/tmp"}] + json.loads(json.dumps(sv.env))
    c["env"] = env
    if settings.image_pull_policy:
        c["imagePullPolicy"] = settings.image_pull_policy
    return c


def build_serving_deployment(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings,
                             digest: str) -> dict[str, Any]:
    """`eft serve --model /workspace/export` (or the configured server) with zero-downtime rollouts:
    maxUnavailable 0, and a pod-template annotation with the model digest so a new model rolls."""
    name = efr["metadata"]["name"]
    selector = serving_selector(name)
    pod_labels = {**common_labels(name, "serving"), **selector}
    pod: dict[str, Any] = {
        "securityContext": pod_security_context(settings),
        "containers": [serving_container(efr, spec, settings)],
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": claim_name_for(efr, spec),
                                                                     "readOnly": True}}, dict(TMP_VOLUME)],
    }
    sch = spec.scheduling
    if sch.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in sch.image_pull_secrets]
    if sch.priority_class_name:
        pod["priorityClassName"] = sch.priority_class_name
    return with_hash({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(efr, serving_name(name), common_labels(name, "serving")),
        "spec": {
            # While autoscaling, spec.replicas belongs to the HorizontalPodAutoscaler: left out of the desired
            # object (and of its hash), created at minReplicas (serving.py), kept from the live object on updates.
            **({} if spec.serving.autoscaling.enabled else {"replicas": spec.serving.replicas}),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {DIGEST_ANNOTATION: digest}},
                "spec": pod,
            },
        },
    })


def build_serving_service(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any]:
    name = efr["metadata"]["name"]
    return with_hash({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(efr, serving_name(name), common_labels(name, "serving")),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(name),
            "ports": [{"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}],
        },
    })


def serving_endpoint(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> str:
    m = efr["metadata"]
    return f"http://{serving_name(m['name'])}.{m['namespace']}.svc:{spec.serving.port}"


def needs_disruption_budget(spec: EmbeddingFinetuneSpec) -> bool:
    """A PodDisruptionBudget protects serving only when it can run more than one pod."""
    return spec.serving.enabled and spec.serving.max_replicas() > 1


def build_serving_disruption_budget(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any] | None:
    """The serving pods' PodDisruptionBudget (policy/v1), or None when at most one pod can run.

    ``maxUnavailable: 1`` rather than ``minAvailable``: a minAvailable equal to the replica count (or to the
    autoscaler's current count, which moves) would let no voluntary eviction through and block every node drain,
    while a smaller one would let a drain take several pods at once. maxUnavailable 1 follows the replica count as
    it changes (scaling by hand or by the autoscaler): drains always progress, one serving pod at a time, while
    the others keep answering. It does not slow rollouts (the Deployment's own maxUnavailable 0 governs those).
    """
    if not needs_disruption_budget(spec):
        return None
    name = efr["metadata"]["name"]
    return with_hash({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(efr, serving_name(name), common_labels(name, "serving")),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": serving_selector(name)},
            # A pod that never became ready serves nothing: evicting it must not wait for the budget, else a
            # crash-looping serving pod would block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    })


def build_serving_autoscaler(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler (autoscaling/v2) of the serving Deployment on CPU utilization, or None when
    serving.autoscaling is off. The resource metric needs metrics-server and a CPU request on the pods."""
    auto = spec.serving.autoscaling
    if not (spec.serving.enabled and auto.enabled):
        return None
    name = efr["metadata"]["name"]
    return with_hash({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(efr, serving_name(name), common_labels(name, "serving")),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": serving_name(name)},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": auto.target_cpu_utilization_percentage}}}],
        },
    })


def build_serving_network_policy(efr: dict[str, Any], spec: EmbeddingFinetuneSpec) -> dict[str, Any] | None:
    """The serving pods' NetworkPolicy, or None when serving.networkPolicy is off: ingress on serving.port only,
    only from the allowed client pods (of the resource's namespace unless allowedNamespaces says otherwise)."""
    np = spec.serving.network_policy
    if not (spec.serving.enabled and np.enabled):
        return None
    name = efr["metadata"]["name"]
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(np.allowed_clients.match_labels)}}
    if np.allowed_namespaces is not None:
        # one peer with both selectors: pods with those labels *in* those namespaces
        peer["namespaceSelector"] = {"matchLabels": dict(np.allowed_namespaces.match_labels)}
    return with_hash({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(efr, serving_name(name), common_labels(name, "serving")),
        "spec": {
            "podSelector": {"matchLabels": serving_selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": spec.serving.port}]}],
        },
    })


# ----------------------------------------------------------------------------- events

def build_event(efr: dict[str, Any], etype: str, reason: str, message: str, now: str,
                component: str = "eft-operator") -> dict[str, Any]:
    """A core/v1 Event about the EmbeddingFinetune (shown by `kubectl describe` and `kubectl events`)."""
    m = efr["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{m['name']}.", "namespace": m["namespace"]},
        "involvedObject": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": m["name"],
                           "namespace": m["namespace"], "uid": m["uid"],
                           "resourceVersion": m.get("resourceVersion", "")},
        "type": etype,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": f"{API_GROUP}/operator",
        "reportingInstance": component,
        "action": reason,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
