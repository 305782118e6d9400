"""The e2e tier's failure report (tests/support/cluster_diagnosis.py) reads kubectl's JSON as a person would."""

from pathlib import Path

from tests.support.cluster_diagnosis import (diagnose, interesting_log_lines, node_lines, pod_problems,
                                             warning_events)


def pod(name, phase, conditions=(), containers=(), node="node-1", ns="eft-system"):
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": list(conditions), "containerStatuses": list(containers)}}


def test_healthy_pods_are_left_out_and_stuck_ones_say_why():
    pods = {"items": [
        pod("ok", "Running", containers=[{"name": "c", "ready": True, "state": {"running": {}}}]),
        pod("done", "Succeeded", containers=[{"name": "c", "ready": False,
                                               "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]),
        pod("unscheduled", "Pending", node=None, conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/disk-pressure}"}]),
        pod("creating", "Pending", containers=[{"name": "operator", "ready": False, "state": {
            "waiting": {"reason": "ErrImageNeverPull", "message": "Container image is not present with pull policy"}}}]),
        pod("unready", "Running", containers=[{"name": "server", "ready": False, "state": {"running": {}}}]),
    ]}
    lines = pod_problems(pods)
    assert len(lines) == 3
    assert lines[0].startswith("eft-system/unscheduled Pending on no node: PodScheduled: Unschedulable")
    assert "disk-pressure" in lines[0]
    assert "operator waiting: ErrImageNeverPull Container image is not present" in lines[1]
    assert lines[2] == "eft-system/unready Running on node-1: no reason given"


def test_a_failed_container_is_reported_with_its_reason():
    pods = {"items": [pod("crash", "Running", containers=[{"name": "op", "ready": False, "state": {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}])]}
    assert pod_problems(pods) == ["eft-system/crash Running on node-1: op waiting: CrashLoopBackOff back-off 40s"]


def test_node_lines_show_bad_conditions_and_taints():
    nodes = {"items": [{"metadata": {"name": "n"}, "spec": {"taints": [
        {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "2", "memory": "24Gi"}, "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure", "message": "low"},
            {"type": "MemoryPressure", "status": "False"}]}}]}
    (line,) = node_lines(nodes)
    assert "DiskPressure=True (KubeletHasDiskPressure: low)" in line
    assert "MemoryPressure" not in line and "Ready=" not in line
    assert "node.kubernetes.io/disk-pressure:NoSchedule" in line and "cpu 2 memory 24Gi" in line
    healthy = {"items": [{"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]}
    assert "healthy conditions" in node_lines(healthy)[0]
    assert "Ready=False" in node_lines({"items": [{"metadata": {"name": "n"}, "status": {
        "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}}]})[0]


def test_warning_events_are_the_newest_warnings_oldest_first():
    def ev(t, kind, reason, count=1):
        return {"type": kind, "lastTimestamp": t, "reason": reason, "message": "m", "count": count,
                "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p"}}
    events = {"items": [ev("2026-12-07T06:40:00Z", "Warning", "FailedMount", 4), ev("2026-12-07T06:39:00Z", "Normal",
                                                                                      "Pulled"),
                        ev("2026-12-07T06:38:00Z", "Warning", "FailedCreatePodSandBox")]}
    lines = warning_events(events)
    assert [ln.split()[3] for ln in lines] == ["FailedCreatePodSandBox:", "FailedMount:"]
    assert lines[1].endswith("(x4)")
    assert len(warning_events({"items": [ev(f"2026-12-07T06:{i:02d}:00Z", "Warning", "R") for i in range(40)]},
                              last=5)) == 5


def test_only_error_and_warning_log_lines_are_kept():
    log = ("I1207 06:35:48.1 kubelet.go:1 routine\n"
           "E1207 06:36:01.2 pod_workers.go:1 Error syncing pod\n"
           'time="2026-12-07T06:36:02Z" level=info msg="ok"\n'
           'time="2026-12-07T06:36:03Z" level=error msg="failed to create shim"\n'
           "W1207 06:36:04.0 warnings.go:1 careful\n")
    assert interesting_log_lines(log) == [log.splitlines()[1], log.splitlines()[3], log.splitlines()[4]]


class FakeKubectlRun:
    def __init__(self, returncode, stdout="", stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def test_diagnose_survives_a_cluster_that_does_not_answer(tmp_path: Path):
    """The report is written while something is already broken: a kubectl that fails is reported, not raised."""
    def kubectl(*args, check=True, timeout=None):
        return FakeKubectlRun(1, stderr="The connection to the server was refused")
    (tmp_path / "kubelet.log").write_text("E1207 06:36:01.2 x.go:1 boom\nI1207 fine\n")
    text = diagnose(kubectl, tmp_path, [str(tmp_path), str(tmp_path / "absent")])
    assert "-- pods not running or not ready\n   kubectl get pods -A failed: The connection to the server was " \
           "refused" in text
    assert "E1207 06:36:01.2 x.go:1 boom" in text and "I1207 fine" not in text
    assert f"disk {tmp_path}:" in text and "absent" not in text
    assert "containerd log" not in text


def test_diagnose_says_none_when_nothing_is_wrong(tmp_path: Path):
    answers = {"nodes": {"items": [{"metadata": {"name": "n"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}]}}]}, "pods": {"items": []}, "events": {"items": []}}

    def kubectl(*args, check=True, timeout=None):
        import json
        return FakeKubectlRun(0, stdout=json.dumps(answers[args[1]]))
    text = diagnose(kubectl, None, [])
    assert "-- nodes\n   node n: healthy conditions" in text
    assert "-- pods not running or not ready\n   none" in text and "-- warning events\n   none" in text
    assert "kubelet log" not in text
