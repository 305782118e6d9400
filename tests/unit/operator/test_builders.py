"""The pure child builders: names, the in-pod spec, the workspace claim, stage Jobs, serving."""


from __future__ import annotations

from eft.controller import builders as b

from eft.spec import STAGES
from tests.unit.operator.factories import SETTINGS, UID, efr, parsed


def test_names_fit_kubernetes_limits():
    long = "a" * 63
    jn = b.job_name(long, "evaluate", "0123abcd")
    assert len(jn) <= b.JOB_NAME_MAX and jn.endswith("-evaluate-0123abcd")
    assert b.job_name(long, "evaluate", "0123abcd") != b.job_name("a" * 62 + "b", "evaluate", "0123abcd")
    assert b.job_name("demo", "train", "0123abcd") == "demo-train-0123abcd"
    assert len(b.serving_name(long)) <= 63
    assert b.serving_name("9lives")[0].isalpha()
    assert b.workspace_claim_name("demo") == "demo-workspace"



def test_pod_spec_rewrites_cluster_inputs_to_mount_paths():
    body = efr({"corpus": {"existingClaim": "docs", "path": "handbook/"},
                "baseModel": {"name": "models/e5", "existingClaim": "models"}})
    s = b.pod_spec(parsed(body))
    assert s.corpus.path == "/eft/corpus/handbook" and s.corpus.existing_claim is None
    assert s.base_model.name == "/eft/base-model/models/e5" and s.base_model.existing_claim is None
    cm = efr({"corpus": {"configMap": "small-docs"}})
    assert b.pod_spec(parsed(cm)).corpus.path == "/eft/corpus"
    url = efr({"corpus": {"path": "s3://bucket/docs", "credentialsSecret": "s3"}})
    assert b.pod_spec(parsed(url)).corpus.path == "s3://bucket/docs"


def test_spec_configmap_holds_a_loadable_manifest(tmp_path):
    from eft.spec import load_spec

    body = efr({"corpus": {"existingClaim": "docs", "path": "a"}, "training": {"epochs": 2}})
    cm = b.build_spec_configmap(body, parsed(body))
    f = tmp_path / "spec.yaml"
    f.write_text(cm["data"]["spec.yaml"])
    loaded = load_spec(f)
    assert loaded.name == "demo" and loaded.spec.training.epochs == 2
    assert loaded.spec.corpus.path == "/eft/corpus/a"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    assert cm["metadata"]["annotations"][b.HASH_ANNOTATION] == b.object_hash(cm)



def test_workspace_claim_follows_retention_policy():
    body = efr({"workspace": {"size": "5Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]}})
    pvc = b.build_workspace_claim(body, parsed(body))
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}},
                           "storageClassName": "fast"}
    assert "ownerReferences" not in pvc["metadata"]  # Retain (default): survives the resource
    delete = efr({"workspace": {"retentionPolicy": "Delete"}})
    pvc = b.build_workspace_claim(delete, parsed(delete))
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == UID
    other = {"uid": "someone", "kind": "X", "name": "x", "apiVersion": "v1"}
    assert b.desired_claim_owners(body, parsed(body), [other, b.owner_reference(body)]) == [other]



def test_stage_job_basics():
    body = efr({"queueName": "team-a", "scheduling": {
        "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}}, "priorityClassName": "high", "serviceAccountName": "eft-stage",
        "imagePullSecrets": ["regcred"], "backoffLimit": 3,
        "stages": {"train": {"image": "custom/train:1", "resources": {"limits": {"memory": "8Gi"}}}}},
        "baseModel": {"hfTokenSecret": {"name": "hf", "key": "token"}}})
    spec = parsed(body)
    j = b.build_stage_job(body, spec, "train", "0123abcd", SETTINGS)
    assert j["metadata"]["name"] == "demo-train-0123abcd"
    assert j["metadata"]["labels"][b.QUEUE_LABEL] == "team-a"
    assert j["metadata"]["labels"][b.INSTANCE_LABEL] == "demo"
    assert j["metadata"]["labels"][b.STAGE_LABEL] == "train"
    assert j["spec"]["suspend"] is True  # created suspended: only Kueue's admission starts it
    assert j["spec"]["backoffLimit"] == 3
    pod_spec = j["spec"]["template"]["spec"]
    c = pod_spec["containers"][0]
    assert c["image"] == "custom/train:1"
    assert c["command"] == ["eft", "stage", "train", "--spec", "/etc/eft/spec.yaml", "--workspace", "/workspace"]
    assert c["resources"] == {"limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["nodeSelector"] == {"pool": "gpu"} and pod_spec["priorityClassName"] == "high"
    assert pod_spec["tolerations"][0]["key"] == "gpu" and pod_spec["serviceAccountName"] == "eft-stage"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["HF_HOME"]["value"].startswith("/workspace/")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/eft"]["readOnly"] and "/workspace" in mounts and "/dev/shm" in mounts
    vols = {v["name"]: v for v in pod_spec["volumes"]}
    assert vols["workspace"]["persistentVolumeClaim"]["claimName"] == "demo-workspace"
    assert vols["spec"]["configMap"]["name"] == "demo-spec"
    # CPU stage: default image, no GPU, no /dev/shm
    ing = b.build_stage_job(body, spec, "ingest", "0123abcd", SETTINGS)
    ci = ing["spec"]["template"]["spec"]["containers"][0]
    assert ci["image"] == SETTINGS.image and "nvidia.com/gpu" not in str(ci["resources"])
    assert b.build_stage_job(body, spec, "ingest", "x", SETTINGS, force=True)["spec"]["template"]["spec"][
        "containers"][0]["command"][-1] == "--force"


def test_stage_gpus_and_cpu_cluster():
    spec = parsed(efr({"training": {"gpusPerNode": 4}}))
    assert [b.stage_gpus(spec, s) for s in STAGES] == [0, 0, 1, 4, 1, 1]
    cpu = parsed(efr({"training": {"gpusPerNode": 0}, "scheduling": {"stages": {"evaluate": {"gpus": 2}}}}))
    assert [b.stage_gpus(cpu, s) for s in STAGES] == [0, 0, 0, 0, 2, 0]


def test_stage_secrets_and_inputs():
    body = efr({"corpus": {"existingClaim": "docs", "credentialsSecret": "ignored-for-claims"},
                "sdg": {"backend": "openai", "openai": {"baseURL": "http://nim:8000/v1", "apiKeyEnv": "NIM_KEY",
                                                         "apiKeySecret": {"name": "nim", "key": "k"}}}})
    spec = parsed(body)
    ingest = b.build_stage_job(body, spec, "ingest", "f", SETTINGS)["spec"]["template"]["spec"]
    c = ingest["containers"][0]
    assert {"secretRef": {"name": "ignored-for-claims"}} in c["envFrom"]
    corpus = next(v for v in ingest["volumes"] if v["name"] == "corpus")
    assert corpus["persistentVolumeClaim"] == {"claimName": "docs", "readOnly": True}
    assert {"name": "corpus", "mountPath": "/eft/corpus", "readOnly": True} in c["volumeMounts"]
    sdg = b.build_stage_job(body, spec, "sdg", "f", SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in sdg["env"]}
    assert env["NIM_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "nim", "key": "k"}
    assert "envFrom" not in sdg and not any(m["name"] == "corpus" for m in sdg["volumeMounts"])
    train = b.build_stage_job(body, spec, "train", "f", SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert "NIM_KEY" not in {e["name"] for e in train["env"]}
    cmb = efr({"corpus": {"configMap": "docs-cm"}})
    v = b.build_stage_job(cmb, parsed(cmb), "ingest", "f", SETTINGS)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "corpus", "configMap": {"name": "docs-cm"}} in v


def test_supplied_queries_on_a_claim_or_configmap_are_mounted_into_the_sdg_pod_only():
    claim = efr({"queries": {"path": "logs/queries.jsonl", "existingClaim": "search-logs"}})
    s = b.pod_spec(parsed(claim))
    assert s.queries.path == "/eft/queries/logs/queries.jsonl" and s.queries.existing_claim is None
    pods = {st: b.build_stage_job(claim, parsed(claim), st, "f", SETTINGS)["spec"]["template"]["spec"]
            for st in ("ingest", "sdg", "prepare")}
    assert {"name": "queries", "persistentVolumeClaim": {"claimName": "search-logs", "readOnly": True}} \
        in pods["sdg"]["volumes"]
    assert {"name": "queries", "mountPath": "/eft/queries", "readOnly": True} in pods["sdg"]["containers"][0]["volumeMounts"]
    for other in ("ingest", "prepare"):
        assert not any(v["name"] == "queries" for v in pods[other]["volumes"]), other
    cm = efr({"queries": {"path": "faq.jsonl", "configMap": "faq"}})
    assert b.pod_spec(parsed(cm)).queries.path == "/eft/queries/faq.jsonl"
    sdg = b.build_stage_job(cm, parsed(cm), "sdg", "f", SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "queries", "configMap": {"name": "faq"}} in sdg["volumes"]
    url = efr({"queries": {"path": "https://example.com/queries.jsonl"}})
    assert b.pod_spec(parsed(url)).queries.path == "https://example.com/queries.jsonl"
    assert not any(v["name"] == "queries" for v in
                   b.build_stage_job(url, parsed(url), "sdg", "f", SETTINGS)["spec"]["template"]["spec"]["volumes"])


def test_multi_node_training_is_an_indexed_job_with_rendezvous():
    body = efr({"training": {"nodes": 3, "gpusPerNode": 8}})
    spec = parsed(body)
    j = b.build_stage_job(body, spec, "train", "abcd1234", SETTINGS)
    s = j["spec"]
    assert s["completionMode"] == "Indexed" and s["completions"] == 3 and s["parallelism"] == 3
    pod_spec = s["template"]["spec"]
    svc = b.build_rendezvous_service(body, "train", "abcd1234")
    assert pod_spec["subdomain"] == svc["metadata"]["name"] == "demo-train-abcd1234"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {b.JOB_NAME_LABEL: "demo-train-abcd1234"}
    c = pod_spec["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["MASTER_ADDR"]["value"] == "demo-train-abcd1234-0.demo-train-abcd1234"
    assert env["PET_NNODES"]["value"] == "3" and env["PET_NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert c["command"][:3] == ["torchrun", "--module", "eft.cli"] and c["command"][3:5] == ["stage", "train"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    # other stages stay single-pod
    assert "completionMode" not in b.build_stage_job(body, spec, "evaluate", "x", SETTINGS)["spec"]



def test_serving_deployment_rolls_without_downtime():
    body = efr({"serving": {"replicas": 2, "port": 9000, "resources": {"limits": {"cpu": "2"}}, "gpus": 1}})
    spec = parsed(body)
    d = b.build_serving_deployment(body, spec, SETTINGS, "digest-1")
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert d["spec"]["template"]["metadata"]["annotations"][b.DIGEST_ANNOTATION] == "digest-1"
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["eft"] and c["args"][:3] == ["serve", "--model", "/workspace/export"]
    assert "--port" in c["args"] and "9000" in c["args"]
    assert c["args"][c["args"].index("--served-model-name") + 1] == "demo-embed"
    assert c["image"] == SETTINGS.serving_image
    torch = efr({"serving": {"backend": "torch"}})
    assert b.serving_container(torch, parsed(torch), SETTINGS)["args"][2] == "/workspace/train/model"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["resources"] == {"limits": {"cpu": "2", "nvidia.com/gpu": 1}}
    vol = d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert vol == {"claimName": "demo-workspace", "readOnly": True}
    assert c["volumeMounts"][0]["readOnly"] is True
    d2 = b.build_serving_deployment(body, spec, SETTINGS, "digest-2")
    assert d2["metadata"]["annotations"][b.HASH_ANNOTATION] != d["metadata"]["annotations"][b.HASH_ANNOTATION]
    svc = b.build_serving_service(body, spec)
    assert svc["spec"]["ports"][0]["port"] == 9000
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert b.serving_endpoint(body, spec) == "http://demo-serve.ns.svc:9000"


def test_serving_container_can_be_swapped():
    tei = efr({"serving": {"image": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.5",
                           "args": ["--model-id", "/workspace/train/model", "--port", "8000"],
                           "healthPath": "/health", "env": [{"name": "MAX_BATCH_TOKENS", "value": "16384"}]}})
    c = b.serving_container(tei, parsed(tei), SETTINGS)
    assert "command" not in c and c["args"][0] == "--model-id"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and "tcpSocket" in c["livenessProbe"]
    assert {"name": "MAX_BATCH_TOKENS", "value": "16384"} in c["env"]
    nim = efr({"serving": {"image": "nvcr.io/nim/x:1", "command": ["/opt/nim/start.sh"], "healthPath":
                           "/v1/health/ready"}})
    c = b.serving_container(nim, parsed(nim), SETTINGS)
    assert c["command"] == ["/opt/nim/start.sh"] and "args" not in c


def test_stage_scheduling_falls_back_to_the_operator_defaults():
    from eft.controller.settings import Settings

    defaults = Settings(image="x", default_node_selector={"pool": "gpu"},
                        default_tolerations=[{"key": "gpu", "operator": "Exists"}])
    open_spec = parsed(efr())
    assert b.stage_scheduling(open_spec, defaults) == {"nodeSelector": {"pool": "gpu"},
                                                       "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    assert b.stage_scheduling(open_spec, SETTINGS) == {}
    own = parsed(efr({"scheduling": {"nodeSelector": {"pool": "mine"}, "tolerations": [{"key": "mine"}]}}))
    assert b.stage_scheduling(own, defaults) == {"nodeSelector": {"pool": "mine"}, "tolerations": [{"key": "mine"}]}
    pod = b.build_stage_job(efr(), open_spec, "train", "f", defaults)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] is not defaults.default_tolerations


def test_multi_node_retries_restart_the_whole_group():
    body = efr({"training": {"nodes": 4, "gpusPerNode": 2},
                "scheduling": {"backoffLimit": 2, "stages": {"train": {"activeDeadlineSeconds": 600}}}})
    j = b.build_stage_job(body, parsed(body), "train", "abcd1234", SETTINGS, force=True)
    assert j["spec"]["backoffLimit"] == 8 and j["spec"]["activeDeadlineSeconds"] == 600
    c = j["spec"]["template"]["spec"]["containers"][0]
    assert c["ports"] == [{"name": "rendezvous", "containerPort": b.RENDEZVOUS_PORT}]
    assert c["command"][-1] == "--force" and c["command"][:2] == ["torchrun", "--module"]
    env = b.rendezvous_env("demo-train-abcd1234-0.demo-train-abcd1234", 4, 2)
    assert [e["name"] for e in env] == ["MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "PET_NNODES",
                                        "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"]
    assert c["env"][-len(env):] == env  # after the stage's own variables
