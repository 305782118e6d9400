"""Play the kubelet's part against the test control plane (which has no kubelet and no scheduler).

Pods are bound to a fake Node (binding subresource, as kube-scheduler does), then moved
Pending -> Running -> Succeeded/Failed through the pods/status subresource, with container
statuses as a kubelet writes them (``state.terminated`` with exit code, reason, message).
The real controllers (Job, ReplicaSet, Deployment, GC) react exactly as in a cluster.

    kubelet = FakeKubelet(api_client)          # api_client: kubernetes.client.ApiClient
    kubelet.ensure_node()                      # registers Node "fake-node", Ready
    kubelet.run_job_pods("ns", "job", exit_code=0, message="done")
    wait_for_job_condition(api_client, "ns", "job", "Complete")
    mark_deployment_pods_ready(api_client, "ns", "deploy")

Limits: containers never run; restartPolicy OnFailure/Always restarts are not emulated
(use restartPolicy Never for Job failure paths); pods that are deleted while Running are
force-deleted by :meth:`FakeKubelet.reap_terminating_pods` (a kubelet's confirmation).
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

NODE_NAME = "fake-node"
NODE_IP = "127.0.0.1"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw(resp) -> dict:
    return json.loads(resp.data)


def wait_for(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; return it. TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class FakeKubelet:
    def __init__(self, api_client: client.ApiClient, node_name: str = NODE_NAME):
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.node_name = node_name
        self._ip = 10

    # ------------------------------------------------------------------ node

    def ensure_node(self) -> None:
        """Register the fake Node (idempotent) with a Ready condition and some capacity."""
        try:
            self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
                name=self.node_name,
                labels={"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64", "eft.dev/fake-node": "true"})))
        except ApiException as e:
            if e.status != 409:
                raise
        for attempt in range(20):
            node = _raw(self.core.read_node(self.node_name, _preload_content=False))
            node["status"] = self._node_status()
            try:
                self.core.replace_node_status(self.node_name, node)
                return
            except ApiException as e:  # the ttl controller annotates nodes concurrently
                if e.status != 409 or attempt == 19:
                    raise
                time.sleep(0.05)

    def _node_status(self) -> dict:
        now = _now()
        return {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "1Ti"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "1Ti"},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet is ready",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                *[{"type": t, "status": "False", "reason": f"KubeletHasNo{t}", "message": "",
                   "lastHeartbeatTime": now, "lastTransitionTime": now}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure")],
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                         "kubeProxyVersion": "", "containerRuntimeVersion": "fake://0", "osImage": "fake",
                         "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }

    # ------------------------------------------------------------------ pods

    def _read_pod(self, namespace: str, name: str) -> dict:
        return _raw(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    def _update_status(self, namespace: str, name: str, mutate: Callable[[dict], None]) -> dict:
        for _ in range(20):
            pod = self._read_pod(namespace, name)
            mutate(pod)
            try:
                return _raw(self.core.replace_namespaced_pod_status(name, namespace, pod, _preload_content=False))
            except ApiException as e:
                if e.status != 409:
                    raise
            time.sleep(0.05)
        raise RuntimeError(f"could not update status of pod {namespace}/{name}: conflicts")

    def bind(self, namespace: str, name: str) -> None:
        """Assign the pod to the fake node, as the scheduler does (no-op when already bound)."""
        pod = self._read_pod(namespace, name)
        if pod["spec"].get("nodeName"):
            return
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        # response is a Status that the python client cannot deserialize into V1Binding
        self.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)

    def _container_names(self, pod: dict) -> list[tuple[str, str]]:
        return [(c["name"], c.get("image", "")) for c in pod["spec"].get("containers", [])]

    def start_pod(self, namespace: str, name: str, ready: bool = True) -> dict:
        """Bind the pod and mark it Running (containers started; Ready when ``ready``)."""
        self.bind(namespace, name)
        self._ip += 1
        ip = f"10.244.{self._ip // 250}.{self._ip % 250 + 1}"

        def mutate(pod: dict) -> None:
            now = _now()
            st = pod.setdefault("status", {})
            uid = pod["metadata"]["uid"]
            st.update({
                "phase": "Running", "hostIP": NODE_IP, "hostIPs": [{"ip": NODE_IP}],
                "podIP": st.get("podIP") or ip, "podIPs": st.get("podIPs") or [{"ip": ip}],
                "startTime": st.get("startTime") or now, "qosClass": st.get("qosClass", "BestEffort"),
            })
            ready_s = "True" if ready else "False"
            st["conditions"] = _conditions(st.get("conditions"), now, {
                "PodReadyToStartContainers": "True", "Initialized": "True", "ContainersReady": ready_s,
                "Ready": ready_s, "PodScheduled": "True"})
            st["containerStatuses"] = [{
                "name": cname, "image": image, "imageID": f"fake://{image}", "containerID": f"fake://{uid}-{cname}",
                "ready": ready, "started": True, "restartCount": 0, "state": {"running": {"startedAt": now}},
            } for cname, image in self._container_names(pod)]

        return self._update_status(namespace, name, mutate)

    def finish_pod(self, namespace: str, name: str, exit_code: int = 0, message: str = "",
                   reason: str | None = None) -> dict:
        """Terminate the pod's containers with ``exit_code`` and termination ``message``.

        Phase becomes Succeeded (exit 0) or Failed; the pod is started first when it is not Running.
        """
        pod = self._read_pod(namespace, name)
        if pod.get("status", {}).get("phase") != "Running":
            self.start_pod(namespace, name, ready=False)

        def mutate(pod: dict) -> None:
            now = _now()
            st = pod["status"]
            uid = pod["metadata"]["uid"]
            st["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            st["conditions"] = _conditions(st.get("conditions"), now, {
                "PodReadyToStartContainers": "False", "ContainersReady": "False", "Ready": "False"},
                reason="PodCompleted")
            started = {c["name"]: c.get("state", {}).get("running", {}).get("startedAt", now)
                       for c in st.get("containerStatuses", [])}
            term_reason = reason or ("Completed" if exit_code == 0 else "Error")
            st["containerStatuses"] = [{
                "name": cname, "image": image, "imageID": f"fake://{image}", "containerID": f"fake://{uid}-{cname}",
                "ready": False, "started": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": term_reason, "message": message,
                                         "startedAt": started.get(cname, now), "finishedAt": now,
                                         "containerID": f"fake://{uid}-{cname}"}},
            } for cname, image in self._container_names(pod)]

        return self._update_status(namespace, name, mutate)

    def reap_terminating_pods(self, namespace: str) -> list[str]:
        """Force-delete pods that are Terminating (what a kubelet confirms after stopping them)."""
        reaped = []
        for pod in self.core.list_namespaced_pod(namespace).items:
            if pod.metadata.deletion_timestamp is not None:
                try:
                    self.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
                    reaped.append(pod.metadata.name)
                except ApiException as e:
                    if e.status != 404:
                        raise
        return reaped

    def pending_pods(self, namespace: str, label_selector: str) -> list[str]:
        """Names of pods that no kubelet has run yet (phase Pending, not being deleted), oldest first."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector).items
        pods = [p for p in pods if p.status.phase in (None, "Pending") and p.metadata.deletion_timestamp is None]
        pods.sort(key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))
        return [p.metadata.name for p in pods]

    # ------------------------------------------------------------------ jobs

    def job_selector(self, namespace: str, job_name: str) -> str:
        job = self.batch.read_namespaced_job(job_name, namespace)
        return f"batch.kubernetes.io/controller-uid={job.metadata.uid}"

    def run_job_pods(self, namespace: str, job_name: str, exit_code: int = 0, message: str = "",
                     count: int = 1, timeout: float = 60, reason: str | None = None) -> list[str]:
        """Wait for ``count`` not-yet-run pods of the Job and run each to completion.

        Each is bound, marked Running, then Succeeded (exit 0) or Failed, its containers
        terminated with ``exit_code`` and ``message``. Returns the pod names. After a failure
        the Job controller waits its pod-failure backoff (10 s, doubling) before the next pod.
        """
        selector = self.job_selector(namespace, job_name)
        done: list[str] = []
        while len(done) < count:
            names = wait_for(lambda: [n for n in self.pending_pods(namespace, selector) if n not in done],
                             timeout=timeout, what=f"a pending pod of job {namespace}/{job_name}")
            for name in names[: count - len(done)]:
                self.start_pod(namespace, name)
                self.finish_pod(namespace, name, exit_code=exit_code, message=message, reason=reason)
                done.append(name)
        return done

    # ------------------------------------------------------------------ deployments

    def mark_deployment_pods_ready(self, namespace: str, name: str, timeout: float = 60,
                                   wait: bool = True) -> list[str]:
        """Run the Deployment's pods and mark them Ready until it is fully rolled out.

        Pending pods are bound and made Running+Ready; pods the rollout deletes are reaped.
        With ``wait`` (default) it returns once status shows all replicas updated, ready and
        available; returns the names of the pods it made ready.
        """
        marked: list[str] = []

        def step():
            dep = self.apps.read_namespaced_deployment(name, namespace)
            labels = (dep.spec.selector.match_labels or {}) if dep.spec.selector else {}
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            for pod_name in self.pending_pods(namespace, selector):
                try:
                    self.start_pod(namespace, pod_name, ready=True)
                    marked.append(pod_name)
                except ApiException as e:
                    if e.status != 404:
                        raise
            self.reap_terminating_pods(namespace)
            if not wait:
                return True
            dep = self.apps.read_namespaced_deployment(name, namespace)
            want = dep.spec.replicas if dep.spec.replicas is not None else 1
            s = dep.status
            return ((s.observed_generation or 0) >= dep.metadata.generation
                    and (s.updated_replicas or 0) == want and (s.ready_replicas or 0) == want
                    and (s.available_replicas or 0) == want and (s.replicas or 0) == want)

        wait_for(step, timeout=timeout, interval=0.3, what=f"deployment {namespace}/{name} to be ready")
        if wait:
            # Status counts only pods that are not terminating, so it can read "rolled out" while an old pod
            # the rollout deleted after this step's reap is still Terminating: reap once more so that every
            # pod the rollout removed is gone when this returns.
            self.reap_terminating_pods(namespace)
        return marked


def _conditions(existing: list | None, now: str, wanted: dict[str, str], reason: str | None = None) -> list:
    by_type = {c["type"]: c for c in (existing or [])}
    for ctype, status in wanted.items():
        c = by_type.get(ctype)
        if c is None or c.get("status") != status:
            c = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now}
            if reason and status == "False":
                c["reason"] = reason
            by_type[ctype] = c
    return list(by_type.values())


# ---------------------------------------------------------------------- module-level helpers


def _kubelet(api: client.ApiClient) -> FakeKubelet:
    k = FakeKubelet(api)
    k.ensure_node()
    return k


def run_job_pods(api: client.ApiClient, namespace: str, job_name: str, exit_code: int = 0, message: str = "",
                 count: int = 1, timeout: float = 60) -> list[str]:
    """See :meth:`FakeKubelet.run_job_pods` (registers the fake node first)."""
    return _kubelet(api).run_job_pods(namespace, job_name, exit_code=exit_code, message=message, count=count,
                                      timeout=timeout)


def mark_deployment_pods_ready(api: client.ApiClient, namespace: str, name: str, timeout: float = 60,
                               wait: bool = True) -> list[str]:
    """See :meth:`FakeKubelet.mark_deployment_pods_ready` (registers the fake node first)."""
    return _kubelet(api).mark_deployment_pods_ready(namespace, name, timeout=timeout, wait=wait)


def job_condition(api: client.ApiClient, namespace: str, name: str, ctype: str):
    """The Job's condition of type ``ctype`` with status True, or None."""
    job = client.BatchV1Api(api).read_namespaced_job(name, namespace)
    for c in (job.status.conditions or []) if job.status else []:
        if c.type == ctype and c.status == "True":
            return c
    return None


def wait_for_job_condition(api: client.ApiClient, namespace: str, name: str, ctype: str, timeout: float = 60):
    """Wait until the Job has condition ``ctype`` (Complete, Failed, ...) True; return the condition."""
    return wait_for(lambda: job_condition(api, namespace, name, ctype), timeout=timeout,
                    what=f"job {namespace}/{name} condition {ctype}")
