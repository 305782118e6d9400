"""Produce the README's operator transcript from a real run on the test control plane.

    .venv/bin/python -m tests.operator.readme_demo

Starts the control plane, installs the CRD, runs `eft operator` as a ServiceAccount bound to the chart's
rules, `kubectl apply`s examples/quickstart.yaml, plays the kubelet for each stage Job (the evaluate pod
reports headline metrics in its termination message, as the real stage does) and for the serving pods,
and prints each kubectl command with its real output.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from eft.spec import STAGES
from tests.operator.harness import Cluster, OperatorProcess, install_crd, operator_kubeconfig
from tests.support.controlplane import ControlPlane, get_binaries, load_build_module
from tests.support.kubelet import FakeKubelet

REPO = Path(__file__).resolve().parents[2]
NS = "ml"
# What the quickstart's evaluate stage printed on this machine (see README: local quickstart).
EVAL = {"baseNdcg10": 0.8796, "tunedNdcg10": 0.928, "gate": "passed", "gateMetric": "ndcg@10", "gateDataset": "test"}


def show(cp: ControlPlane, *args: str, check: bool = True) -> str:
    r = cp.kubectl(*args, check=check, timeout=120)
    out = (r.stdout + r.stderr).rstrip()
    print(f"$ kubectl {' '.join(shlex.quote(a) for a in args)}\n{out}\n", flush=True)
    return out


def main() -> int:
    binaries = get_binaries()
    if binaries is None:
        print("control-plane binaries missing: python tests/controlplane/build.py", file=sys.stderr)
        return 2
    cp = ControlPlane(binaries, versions=load_build_module().versions())
    cp.start()
    op = None
    try:
        install_crd(cp)
        cp.kubectl("create", "namespace", NS)
        tmp = Path(tempfile.mkdtemp(prefix="eft-demo-"))
        op = OperatorProcess(operator_kubeconfig(cp, NS, tmp / "op.kubeconfig"), NS, tmp / "operator.log").start()
        kubelet = FakeKubelet(cp.api_client())
        kubelet.ensure_node()
        cluster = Cluster(cp, NS)
        show(cp, "apply", "-n", NS, "-f", str(REPO / "examples" / "quickstart.yaml"))
        for i, stage in enumerate(STAGES):
            job = cluster.stage_job("quickstart", stage, timeout=60)
            if i == 2:
                show(cp, "get", "eft", "-n", NS)
                show(cp, "get", "jobs", "-n", NS)
            msg = json.dumps(EVAL) if stage == "evaluate" else f"{stage}: ok"
            kubelet.run_job_pods(NS, job["metadata"]["name"], message=msg)
        import time

        deadline = time.time() + 60
        while cluster.deployment("quickstart-serve") is None and time.time() < deadline:
            time.sleep(0.5)
        kubelet.mark_deployment_pods_ready(NS, "quickstart-serve")
        show(cp, "wait", "-n", NS, "--for=condition=Ready", "embeddingfinetune/quickstart", "--timeout=60s")
        show(cp, "get", "eft", "-n", NS)
        show(cp, "get", "jobs,deployments,services,pvc", "-n", NS)
        show(cp, "get", "events", "-n", NS, "--field-selector", "involvedObject.kind=EmbeddingFinetune",
             "--sort-by=.lastTimestamp")
        return 0
    finally:
        if op is not None:
            op.stop()
        cp.cleanup(keep=False)


if __name__ == "__main__":
    sys.exit(main())
