"""Real Kueue (tests/cluster/kueue.py) queues real Jobs on the real cluster, the way it will queue the eft
operator's stage Jobs: no eft image, only Kueue, batch/v1 Jobs and a tiny sleep image.

- ClusterQueue quota cpu=1; two Jobs created ``suspend: true`` with the queue label (as the operator creates
  them), each requesting cpu 1: the first is admitted (unsuspended, Workload Admitted), the second stays
  suspended with QuotaReserved=False saying the quota is insufficient, until the first finishes; then it runs.
- A labelled Job created without ``suspend`` comes back suspended from the API server (Kueue's mutating
  webhook, called by URL on the host); an unlabelled one is left alone.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import yaml

from tests.support.cluster import namespace
from tests.support.controlplane import unavailable
from tests.support.modules import load_file_module
from tests.support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

KUEUE_PY = REPO / "tests" / "cluster" / "kueue.py"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # what the operator sets (operator/builders.py QUEUE_LABEL)
_MISSING = pytest.StashKey[str]()


def kueue_module():
    return load_file_module("eft_test_kueue", KUEUE_PY)


@pytest.fixture(scope="module")
def kueue(request, real_cluster):
    km = kueue_module()
    try:
        km.ensure_kueue(build=True)  # ~once per machine (Go build of cmd/kueue); cached after
    except km.KueueError as e:
        unavailable(request.config, _MISSING, "Kueue", "e2e", str(e))
    with km.Kueue(real_cluster.kubeconfig, km.default_workdir()) as k:
        print(f"kueue {km.KUEUE_VERSION} ready in {k.started_seconds}s: {json.dumps(k.info())}")
        yield k


@pytest.fixture(scope="module")
def sleep_image(real_cluster):
    return kueue_module().ensure_sleep_image()


def job(name: str, queue: str | None, image: str, seconds: float, suspend: bool | None) -> dict:
    spec = {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "sleep", "image": image, "imagePullPolicy": "Never", "args": [str(seconds)],
                        "resources": {"requests": {"cpu": "1", "memory": "16Mi"}, "limits": {"memory": "16Mi"}}}]}}}
    if suspend is not None:
        spec["suspend"] = suspend
    labels = {QUEUE_LABEL: queue} if queue else {}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels}, "spec": spec}


def workload_of(rc, ns: str, job_name: str) -> dict | None:
    uid = rc.get("job", job_name, "-n", ns)["metadata"]["uid"]
    for wl in rc.get("workloads.kueue.x-k8s.io", "-n", ns)["items"]:
        if any(o.get("uid") == uid for o in wl["metadata"].get("ownerReferences") or []):
            return wl
    return None


def cond(obj: dict | None, kind: str) -> dict:
    return kueue_module().condition(obj or {}, kind)


def wait_for(what: str, fn, timeout: float = 60, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def job_state(rc, ns: str, name: str) -> str:
    j = rc.get("job", name, "-n", ns)
    wl = workload_of(rc, ns, name)
    done = [c["type"] for c in (j.get("status") or {}).get("conditions") or [] if c["status"] == "True"]
    return (f"{name}: suspend={j['spec'].get('suspend')} active={(j.get('status') or {}).get('active', 0)} "
            f"done={done} workload QuotaReserved={cond(wl, 'QuotaReserved').get('status')} "
            f"Admitted={cond(wl, 'Admitted').get('status')} ({cond(wl, 'QuotaReserved').get('message', '')})")


def test_a_second_job_waits_for_quota_and_the_webhook_suspends_labelled_jobs(real_cluster, kueue, sleep_image):
    rc, km = real_cluster, kueue_module()
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {msg}", flush=True)

    with namespace(rc) as ns:
        cq = f"{ns}-cq"
        km.apply_queues(rc.kubeconfig, ns, cpu="1", memory="1Gi", cluster_queue=cq, local_queue="lq")
        say(f"ClusterQueue {cq} (cpu 1, memory 1Gi, gpu 0) Active; LocalQueue {ns}/lq Active")
        try:
            # as the eft operator does: created suspended, with the queue label
            rc.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(job("first", "lq", sleep_image, 12, True)))
            wait_for("the first Job to be admitted",
                     lambda: rc.get("job", "first", "-n", ns)["spec"].get("suspend") is False
                     and cond(workload_of(rc, ns, "first"), "Admitted").get("status") == "True")
            say("admitted: " + job_state(rc, ns, "first"))

            rc.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(job("second", "lq", sleep_image, 1, True)))
            pending = wait_for("the second Job's Workload to report the quota",
                               lambda: cond(workload_of(rc, ns, "second"), "QuotaReserved").get("status") == "False"
                               and cond(workload_of(rc, ns, "second"), "QuotaReserved"))
            say("pending: " + job_state(rc, ns, "second"))
            assert "insufficient" in pending["message"] and "cpu" in pending["message"], pending
            assert rc.get("job", "second", "-n", ns)["spec"]["suspend"] is True
            # still held while the first runs
            time.sleep(3)
            first = rc.get("job", "first", "-n", ns)
            assert not any(c["type"] == "Complete" for c in (first.get("status") or {}).get("conditions") or [])
            assert rc.get("job", "second", "-n", ns)["spec"]["suspend"] is True
            assert cond(workload_of(rc, ns, "second"), "Admitted").get("status") != "True"
            say("still pending while the first runs: " + job_state(rc, ns, "second"))

            rc.kubectl("wait", "-n", ns, "--for=condition=Complete", "job/first", "--timeout=120s", timeout=150)
            say("finished: " + job_state(rc, ns, "first"))
            wait_for("the second Job to be admitted after the first finished",
                     lambda: rc.get("job", "second", "-n", ns)["spec"].get("suspend") is False
                     and cond(workload_of(rc, ns, "second"), "Admitted").get("status") == "True")
            say("admitted: " + job_state(rc, ns, "second"))
            rc.kubectl("wait", "-n", ns, "--for=condition=Complete", "job/second", "--timeout=120s", timeout=150)
            say("finished: " + job_state(rc, ns, "second"))

            # the mutating webhook: a labelled Job created runnable comes back from the API server suspended
            created = json.loads(rc.kubectl("create", "-n", ns, "-o", "json", "-f", "-", input=json.dumps(
                job("unsuspended", "lq", sleep_image, 1, None))).stdout)
            say(f"labelled Job created without suspend: the API server returned suspend="
                f"{created['spec'].get('suspend')}")
            assert created["spec"]["suspend"] is True
            # and Kueue then admits it (quota is free again): it was queued, not broken
            wait_for("the webhook-suspended Job to be admitted",
                     lambda: cond(workload_of(rc, ns, "unsuspended"), "Admitted").get("status") == "True"
                     and rc.get("job", "unsuspended", "-n", ns)["spec"].get("suspend") is False)
            say("admitted: " + job_state(rc, ns, "unsuspended"))
            plain = json.loads(rc.kubectl("create", "-n", ns, "-o", "json", "-f", "-", input=json.dumps(
                job("unqueued", None, sleep_image, 0, None))).stdout)
            assert plain["spec"].get("suspend") is False, "a Job without the queue label is not Kueue's"
            say("unlabelled Job: suspend=False, no Workload")
        finally:
            # Kueue removes its finalizers from Workloads and queues: clean up while it still runs
            rc.kubectl("delete", "jobs", "--all", "-n", ns, "--cascade=foreground", "--timeout=120s",
                       check=False, timeout=150)
            wait_for("the namespace's Workloads to go",
                     lambda: not rc.get("workloads.kueue.x-k8s.io", "-n", ns)["items"], timeout=60)
            say("Jobs and Workloads deleted")
            km.delete_queues(rc.kubeconfig, ns, cluster_queue=cq, local_queue="lq", flavor="default-flavor")
            say("queues deleted")
    say(f"done in {time.monotonic() - t0:.1f}s")


def _suffixed(docs: list[dict], suffix: str) -> list[dict]:
    """The gitops objects under names of their own (the cluster-scoped ones could collide with a real queue's),
    references included; the namespace stays ml-team, the LocalQueue's, which the test creates."""
    names = {d["metadata"]["name"]: d["metadata"]["name"] + suffix for d in docs
             if d["kind"] in ("ResourceFlavor", "ClusterQueue")}
    for d in docs:
        d["metadata"]["name"] = names.get(d["metadata"]["name"], d["metadata"]["name"] + suffix)
        for group in d["spec"].get("resourceGroups") or []:
            for flavor in group["flavors"]:
                flavor["name"] = names[flavor["name"]]
        if d["kind"] == "LocalQueue":
            d["spec"]["clusterQueue"] = names[d["spec"]["clusterQueue"]]
    return docs


def test_the_gitops_queues_apply_to_real_kueue(real_cluster, kueue):
    """gitops/kueue/queues.yaml (the queues examples/kueue.yaml assumes) passes the v1beta2 schema and Kueue's
    webhooks, and Kueue makes its ClusterQueue Active; then it is deleted again (while Kueue runs: finalizers).
    The real apply uses the file's objects under suffixed names, so it never touches a real `eft` queue."""
    rc, km = real_cluster, kueue_module()
    queues = REPO / "gitops" / "kueue" / "queues.yaml"
    docs = _suffixed([d for d in yaml.safe_load_all(queues.read_text()) if d], "-" + uuid.uuid4().hex[:6])
    manifest = yaml.safe_dump_all(docs)
    cq, lq = (next(d["metadata"]["name"] for d in docs if d["kind"] == k) for k in ("ClusterQueue", "LocalQueue"))
    made_ns = rc.kubectl("create", "namespace", "ml-team", check=False).returncode == 0  # the LocalQueue's
    try:
        out = rc.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(queues)).stdout
        assert out.count("serverside-applied") == 4, out
        rc.kubectl("apply", "--server-side", "-f", "-", input=manifest)
        try:
            rc.kubectl("wait", "--for=condition=Active", f"clusterqueue/{cq}", "--timeout=60s", timeout=90)
            rc.kubectl("wait", "--for=condition=Active", f"localqueue/{lq}", "-n", "ml-team", "--timeout=60s",
                       timeout=90)
            got = rc.get("clusterqueue", cq)
            assert got["apiVersion"] == km.API and got["spec"]["namespaceSelector"] == {}
        finally:
            rc.kubectl("delete", "-f", "-", "--ignore-not-found", "--timeout=60s", input=manifest, timeout=90)
    finally:
        if made_ns and os.environ.get("EFT_KEEP_CLUSTER") != "1":
            rc.kubectl("delete", "namespace", "ml-team", "--wait=false", check=False)
