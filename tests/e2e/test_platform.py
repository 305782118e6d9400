"""Self-service on a shared cluster, on the real cluster with the real images, real Kueue and real users.

A platform installs the chart with a policy (images only from its registry, no serving command overrides, no
GPUs, one CPU per stage pod by default, a default Kueue queue) and real Kueue v0.17.0 with a ClusterQueue whose
quota fits one stage pod. A tenant (a real user with a client certificate, bound to the built-in `edit` role in
their namespace only) then:

- is refused in another namespace, and refused at admission for a foreign image or a serving command;
- creates two fine-tunes at once: one waits `Queued` while the other holds the quota, their stage Jobs are
  admitted one at a time (no two stage pods ever overlap), and both finish; the first serves with two
  replicas behind a PodDisruptionBudget, a HorizontalPodAutoscaler and a NetworkPolicy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import RELEASE, OPERATOR_NAMESPACE, namespace
from tests.support.modules import load_file_module
from tests.support.paths import REPO
from tests.support.specs import quickstart_variant
from tests.support.users import user_kubeconfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

QUEUE = "eft-queue"
STAGE_CPU = "1"
POLICY = {
    "allowedRegistries": ["registry.corp/ml"],
    "allowImageOverrides": True,
    "allowCommandOverrides": False,
    "defaultQueue": QUEUE,
    "maxGpusPerPod": 0,
    "maxResources": {"cpu": STAGE_CPU, "memory": "8Gi"},
    "stageDefaults": {s: {"requests": {"cpu": STAGE_CPU}}
                      for s in ("ingest", "sdg", "prepare", "train", "evaluate", "export")},
    "admission": {"enabled": True},
}
DEFAULT_POLICY = {"allowedRegistries": [], "allowImageOverrides": True, "allowCommandOverrides": True,
                  "defaultQueue": "", "maxGpusPerPod": None, "maxResources": {}, "stageDefaults": {},
                  "admission": {"enabled": True}}


def set_policy(rc, policy: dict) -> None:
    rc.helm("upgrade", RELEASE, str(REPO / "helm" / "eft-operator"), "--namespace", OPERATOR_NAMESPACE,
            "--reuse-values", "--set-json", f"policy={json.dumps(policy)}", "--wait", "--timeout", "180s",
            timeout=240)
    rc.kubectl("rollout", "status", "-n", OPERATOR_NAMESPACE, f"deployment/{RELEASE}-eft-operator",
               "--timeout=180s", check=False, timeout=200)


class Tenant:
    """kubectl as a real user (client certificate), never as the admin."""

    def __init__(self, rc, kubeconfig: Path):
        self.rc, self.kubeconfig = rc, kubeconfig

    def kubectl(self, *args, input: str | None = None):
        return self.rc.kubectl("--kubeconfig", str(self.kubeconfig), *args, input=input, check=False)

    def apply(self, ns: str, doc: dict):
        return self.kubectl("create", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))


@pytest.fixture(scope="module")
def platform(real_cluster, eft_operator, tmp_path_factory):
    """Kueue, a quota for one stage pod, the chart's policy, and a tenant with `edit` in one namespace."""
    rc = real_cluster
    kueue = load_file_module("eft_test_kueue", REPO / "tests" / "cluster" / "kueue.py")
    with kueue.Kueue(rc.kubeconfig, tmp_path_factory.mktemp("kueue")) as running:
        with namespace(rc) as mine, namespace(rc) as other:
            kueue.apply_queues(rc.kubeconfig, mine, cpu=STAGE_CPU, memory="8Gi", cluster_queue="eft-platform",
                               local_queue=QUEUE)
            set_policy(rc, POLICY)
            pki = Path(rc.kubeconfig).parent / "pki"
            users = tmp_path_factory.mktemp("users")
            alice = Tenant(rc, user_kubeconfig(rc.kubeconfig, pki, "alice", ("ml-team",), users))
            rc.kubectl("create", "rolebinding", "alice-edit", "-n", mine, "--clusterrole=edit", "--user=alice")
            try:
                yield rc, alice, mine, other, running
            finally:
                set_policy(rc, DEFAULT_POLICY)
                # Kueue's finalizers on Workloads and queues: remove them while Kueue still runs
                rc.kubectl("delete", "embeddingfinetunes,jobs", "--all", "-n", mine, "--wait=true",
                           "--timeout=120s", check=False, timeout=150)
                kueue.delete_queues(rc.kubeconfig, mine, cluster_queue="eft-platform", local_queue=QUEUE)


def test_the_tenant_is_refused_outside_its_namespace_and_outside_the_policy(platform):
    rc, alice, mine, other, _ = platform
    refused = alice.apply(other, quickstart_variant("elsewhere"))
    print(f"\nalice in {other}: {refused.stderr.strip()}")
    assert refused.returncode != 0 and "Forbidden" in refused.stderr and "alice" in refused.stderr
    foreign = alice.apply(mine, quickstart_variant("foreign", **{"serving.image": "evil.example/server:1"}))
    print(f"alice, a foreign image: {foreign.stderr.strip()}")
    assert foreign.returncode != 0 and "not from an allowed registry (registry.corp/ml)" in foreign.stderr
    command = alice.apply(mine, quickstart_variant("command", **{"serving.command": ["/bin/sh", "-c", "env"]}))
    print(f"alice, a serving command: {command.stderr.strip()}")
    assert command.returncode != 0 and "allowCommandOverrides is false" in command.stderr
    gpus = alice.apply(mine, quickstart_variant("gpus", **{"training.gpusPerNode": 1}))
    assert gpus.returncode != 0 and "a pod would request 1 GPUs" in gpus.stderr
    assert alice.kubectl("get", "embeddingfinetunes", "-n", mine).returncode == 0
    assert alice.kubectl("get", "embeddingfinetunes", "-n", other).returncode != 0


def _phase(rc, ns: str, name: str) -> tuple[str | None, str | None, str | None]:
    st = rc.get("embeddingfinetune", name, "-n", ns).get("status") or {}
    queued = next((c for c in st.get("conditions") or [] if c["type"] == "Queued"), {})
    return st.get("phase"), st.get("stage"), queued.get("status")


def _stage_pod_intervals(rc, ns: str) -> list[tuple[float, float, str]]:
    def ts(text: str) -> float:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))

    out = []
    for p in rc.get("pods", "-n", ns, "-l", "eft.ai/stage")["items"]:
        term = ((p["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("terminated") or {}
        if term.get("startedAt") and term.get("finishedAt"):
            out.append((ts(term["startedAt"]), ts(term["finishedAt"]), p["metadata"]["name"]))
    return sorted(out)


def test_two_fine_tunes_share_one_queue_stage_by_stage(platform):
    rc, alice, mine, _, _ = platform
    first = quickstart_variant("first", **{
        "workspace.accessModes": ["ReadWriteMany"], "serving.replicas": 2,
        "serving.resources": {"requests": {"cpu": "100m"}},
        "serving.autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 3},
        "serving.networkPolicy": {"enabled": True, "allowedClients": {"matchLabels": {"eft-client": "true"}}}})
    # the second also trains on the tenant's own queries, from a ConfigMap she creates (mounted into its sdg pod)
    faq = "".join(json.dumps(q) + "\n" for q in (
        {"query": "how do I keep a pod's containers from restarting forever", "ids": ["kubernetes-api/core/v1/PodSpec.md"]},
        {"query": "how many replicas does a deployment keep", "ids": ["kubernetes-api/apps/v1/DeploymentSpec.md"]}))
    cm = alice.kubectl("create", "configmap", "faq", "-n", mine, f"--from-literal=queries.jsonl={faq}")
    assert cm.returncode == 0, cm.stderr
    second = quickstart_variant("second", **{"sdg.maxChunks": 60, "serving.enabled": False, "queries": {
        "configMap": "faq", "path": "queries.jsonl", "use": "withGenerated"}})
    t0 = time.monotonic()
    for doc in (first, second):
        made = alice.apply(mine, doc)
        assert made.returncode == 0, made.stderr
    seen: list[tuple[float, tuple, tuple]] = []
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        now = (_phase(rc, mine, "first"), _phase(rc, mine, "second"))
        if not seen or seen[-1][1:] != now:
            seen.append((round(time.monotonic() - t0), *now))
        if now[0][0] == "Serving" and now[1][0] == "Succeeded":
            break
        if {now[0][0], now[1][0]} & {"Failed", "Blocked"}:
            statuses = {n: rc.get("embeddingfinetune", n, "-n", mine).get("status") for n in ("first", "second")}
            pytest.fail(f"a fine-tune failed: {json.dumps(statuses, indent=1)[:6000]}\n{seen}")
        time.sleep(1)
    print("\nt(s)  first (phase, stage, Queued)          second (phase, stage, Queued)")
    for t, a, b in seen:
        print(f"{t:5d}  {str(a):38s} {b}")
    assert seen[-1][1][0] == "Serving" and seen[-1][2][0] == "Succeeded", seen
    # one waited, Queued (condition True), while the other held the quota; which one is Kueue's choice
    assert any(a[0] == "Queued" and a[2] == "True" and b[0] == "Running" for _, a, b in seen) or \
        any(b[0] == "Queued" and b[2] == "True" and a[0] == "Running" for _, a, b in seen), seen
    # admitted one stage at a time: no two stage pods of the namespace ever ran at once
    intervals = _stage_pod_intervals(rc, mine)
    assert len(intervals) >= 12, intervals
    for (s1, e1, p1), (s2, e2, p2) in zip(intervals, intervals[1:]):
        assert s2 >= e1, f"{p2} started before {p1} finished"
    # every stage Job went through Kueue with the platform's defaults
    jobs = rc.get("jobs", "-n", mine, "-l", "eft.ai/stage")["items"]
    assert {j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for j in jobs} == {QUEUE}
    assert {j["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] for j in jobs} == {STAGE_CPU}
    sdg = next(st for st in rc.get("embeddingfinetune", "second", "-n", mine)["status"]["stages"] if st["name"] == "sdg")
    print(f"second's sdg stage: {sdg['message']}")
    assert sdg["message"].endswith("(offline+supplied)"), sdg
    workloads = rc.get("workloads.kueue.x-k8s.io", "-n", mine)["items"]
    admitted = [w for w in workloads if any(c["type"] == "Admitted" for c in w["status"].get("conditions") or [])]
    assert len(admitted) == len(jobs), (len(admitted), len(jobs))
    print(rc.kubectl("get", "workloads.kueue.x-k8s.io,eft,pdb,hpa,networkpolicy", "-n", mine).stdout)
    # serving on a shared cluster
    pdb = rc.get("pdb", "first-serve", "-n", mine)
    assert pdb["spec"]["maxUnavailable"] == 1
    deadline = time.monotonic() + 60
    while (pdb.get("status") or {}).get("expectedPods") != 2 and time.monotonic() < deadline:
        time.sleep(1)
        pdb = rc.get("pdb", "first-serve", "-n", mine)
    assert pdb["status"]["expectedPods"] == 2, pdb.get("status")  # the disruption controller counts the pods
    hpa = rc.get("hpa", "first-serve", "-n", mine)
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 3
    policy = rc.get("networkpolicy", "first-serve", "-n", mine)
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"] == {"matchLabels": {"eft-client": "true"}}
