#!/usr/bin/env python3
"""Real Kueue (sigs.k8s.io/kueue, one pinned release) against the real test cluster of tests/cluster/cluster.py.

Kueue runs as a process on the host, as the control plane does, not as a pod: the cluster has no registry to
pull its image from, and the API server (on the host) reaches a host process on 127.0.0.1 directly. Its
admission webhooks are therefore registered with ``clientConfig.url: https://127.0.0.1:<port>/<path>`` and
the CA of a certificate made here, instead of a Service; Kueue's internal certificate management is off.

    python tests/cluster/kueue.py build    # the binary, built once from the Go module proxy into the cache
    python tests/cluster/kueue.py up       # CRDs + webhooks + the process, in the foreground (Ctrl-C stops)
    python tests/cluster/kueue.py down     # stop one left running, delete its webhook configurations
    python tests/cluster/kueue.py down --purge   # also every Kueue object and the CRDs

Importable (tests/e2e): ``ensure_kueue()``, ``Kueue(kubeconfig, workdir)`` (a context manager),
``apply_queues(...)`` / ``delete_queues(...)``, ``remove_webhooks(kubeconfig)``, ``ensure_sleep_image()``.

Only 127.0.0.1 is listened on (webhook server and health probes); metrics and the visibility server are off.
A webhook configuration left pointing at a dead process would make the API server refuse the objects it
matches, so ``stop()`` deletes the configurations before it stops the process, ``start()`` first removes
what an earlier, killed run left, and ``remove_webhooks()`` is there for a cluster's teardown. The Job
webhooks match only Jobs that carry the queue label (``all_jobs=True`` gives upstream's every-Job match).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.append(str(REPO))  # appended: the repository's operator/ must not shadow the stdlib's operator
from tests.support.controlplane import _child_setup, generate_pki, load_build_module  # noqa: E402
from tests.support.modules import load_file_module  # noqa: E402

KUEUE_MODULE = "sigs.k8s.io/kueue"
KUEUE_VERSION = "v0.17.0"
API = "kueue.x-k8s.io/v1beta2"  # the storage version; the CRDs also serve v1beta1, without a conversion webhook
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NAMESPACE = "kueue-system"  # Kueue's own namespace (excluded from its managed namespaces; holds nothing here)
MUTATING = "eft-kueue-mutating-webhook-configuration"
VALIDATING = "eft-kueue-validating-webhook-configuration"
MANAGED_BY = {"app.kubernetes.io/managed-by": "eft-tests-kueue"}
FIELD_MANAGER = "eft-tests-kueue"
CRD_LABEL = "eft-tests/kueue-version"  # on the CRDs this module applied
# upstream config/components/webhook/manifests.yaml entries Kueue serves with only the batch/job integration
WEBHOOKS = {"mjob.kb.io", "vjob.kb.io", "mworkload.kb.io", "vworkload.kb.io", "mclusterqueue.kb.io",
            "vclusterqueue.kb.io", "mresourceflavor.kb.io", "vresourceflavor.kb.io", "vcohort.kb.io"}
KUEUE_RESOURCES = ["workloads", "localqueues", "clusterqueues", "cohorts", "resourceflavors", "admissionchecks",
                   "workloadpriorityclasses", "provisioningrequestconfigs", "multikueueconfigs",
                   "multikueueclusters", "topologies"]
# Kueue reads its metrics certificate from this fixed path whenever internal cert management is off, and exits
# when it is missing (cmd/kueue/main.go). It is provided in a private mount namespace (an overlay on /etc that
# only the Kueue process sees), so the host's /etc is never written.
METRICS_CERT_DIR = "/etc/kueue/metrics/certs"
SLEEP_IMAGE = "docker.io/eft-test/sleep:1"  # tests/cluster/kueue/sleep.c, FROM scratch

CACHE_ROOT = Path(os.environ.get("EFT_KUEUE_CACHE") or (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eft" / "kueue"))


class KueueError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[kueue {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cluster_module():
    return load_file_module("eft_test_cluster", HERE / "cluster.py")


# --------------------------------------------------------------------------- the binary


def cache_dir() -> Path:
    return CACHE_ROOT / KUEUE_VERSION


def binary_path() -> Path:
    return cache_dir() / "kueue"


def _go() -> str:
    go = load_build_module().find_go()
    if not go:
        raise KueueError(f"Go is not installed (no `go` on PATH): Kueue {KUEUE_VERSION} is built from the Go module "
                         "proxy (`make controlplane` needs Go too). Install Go, or put a kueue binary at "
                         f"{binary_path()}")
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ, GOTOOLCHAIN="local", GOWORK="off", CGO_ENABLED="0", GOFLAGS="-mod=readonly")
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def module_dir() -> Path:
    """The Kueue module's source in the Go module cache (downloaded when missing; read-only)."""
    go = _go()
    with tempfile.TemporaryDirectory() as tmp:  # outside any module: no go.mod of ours is consulted
        proc = subprocess.run([go, "mod", "download", "-json", f"{KUEUE_MODULE}@{KUEUE_VERSION}"], cwd=tmp,
                              env=_go_env(), capture_output=True, text=True)
    info = json.loads(proc.stdout or "{}") if proc.stdout.strip().startswith("{") else {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise KueueError(f"go mod download {KUEUE_MODULE}@{KUEUE_VERSION} failed: "
                         f"{info.get('Error') or proc.stderr.strip()[-1000:]}")
    return Path(info["Dir"])


def build_kueue() -> dict:
    """``go build ./cmd/kueue`` inside the module (CGO off, upstream's version ldflags) into the cache."""
    go = _go()
    src = module_dir()
    out = binary_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():
            return {"binary": str(out), "seconds": 0.0, "built": False}
        t0 = time.monotonic()
        pkg = "sigs.k8s.io/kueue/pkg/version"
        ldflags = f"-s -w -X {pkg}.GitVersion={KUEUE_VERSION} -X {pkg}.BuildDate=1970-01-01T00:00:00Z"
        tmp = out.parent / f".kueue.{os.getpid()}"
        cmd = [go, "build", "-buildvcs=false", "-ldflags", ldflags, "-o", str(tmp), "./cmd/kueue"]
        log(f"+ (cd {src} && {' '.join(cmd[:3])} -ldflags '{ldflags}' -o {tmp} ./cmd/kueue)")
        proc = subprocess.run(cmd, cwd=src, env=_go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise KueueError(f"go build ./cmd/kueue failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
        os.replace(tmp, out)
        seconds = round(time.monotonic() - t0, 1)
        go_version = subprocess.run([go, "env", "GOVERSION"], env=_go_env(), capture_output=True,
                                    text=True).stdout.strip()
        (out.parent / "manifest.json").write_text(json.dumps({
            "module": f"{KUEUE_MODULE}@{KUEUE_VERSION}", "go": go_version, "seconds": seconds,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
        return {"binary": str(out), "seconds": seconds, "built": True, "go": go_version}


def ensure_kueue(build: bool = True) -> Path:
    """The kueue binary of KUEUE_VERSION; built when missing and ``build`` (KueueError when it cannot be)."""
    out = binary_path()
    if out.is_file() and os.access(out, os.X_OK):
        return out
    if not build:
        raise KueueError(f"{out} is missing: run `make kueue` (python tests/cluster/kueue.py build)")
    summary = build_kueue()
    if summary["built"]:
        log(f"built kueue {KUEUE_VERSION} with {summary['go']} in {summary['seconds']}s")
    return out


# --------------------------------------------------------------------------- kubectl


def kubectl(kubeconfig: str | Path, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    tool = load_build_module().bin_dir() / "kubectl"
    if not tool.is_file():
        raise KueueError(f"{tool} is missing: run `make controlplane`")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    proc = subprocess.run([str(tool), *map(str, args)], env=env, input=input, text=True, capture_output=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise KueueError(f"kubectl {' '.join(map(str, args))[:300]} failed ({proc.returncode}):\n"
                         f"{(proc.stderr or proc.stdout).strip()[-3000:]}")
    return proc


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


# --------------------------------------------------------------------------- webhooks and queues


def remove_webhooks(kubeconfig: str | Path) -> list[str]:
    """Delete the webhook configurations a Kueue of this module registered (idempotent). A cluster's
    teardown, or a test session that starts after a killed one, calls this: the configurations would make the
    API server refuse labelled Jobs and Kueue objects while no Kueue answers."""
    removed = []
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        out = kubectl(kubeconfig, "delete", kind, "-l", selector, "--ignore-not-found", "-o", "name",
                      check=False, timeout=60)
        if out.returncode != 0:
            raise KueueError(f"could not delete the Kueue {kind}s: {out.stderr.strip()[-500:]}")
        removed += [ln for ln in out.stdout.split() if "/" in ln]  # not "No resources found"
    return removed


def webhook_configurations(manifests: Path, port: int, ca_pem: bytes, all_jobs: bool = False) -> list[dict]:
    """Upstream's MutatingWebhookConfiguration / ValidatingWebhookConfiguration, reduced to the webhooks Kueue
    serves here, each pointed at https://127.0.0.1:<port><path> with our CA."""
    import yaml

    ca = base64.b64encode(ca_pem).decode()
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc or doc.get("kind") not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            continue
        hooks = []
        for hook in doc["webhooks"]:
            if hook["name"] not in WEBHOOKS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook = dict(hook, clientConfig={"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca},
                        timeoutSeconds=10)
            if hook["name"] in ("mjob.kb.io", "vjob.kb.io") and not all_jobs:
                # only Jobs with a queue label: a dead Kueue cannot block the rest of the cluster's Jobs
                # (an UPDATE matches when the old or the new object carries it)
                hook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
            hooks.append(hook)
        name = MUTATING if doc["kind"].startswith("Mutating") else VALIDATING
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                    "metadata": {"name": name, "labels": dict(MANAGED_BY)}, "webhooks": hooks})
    found = {h["name"] for d in out for h in d["webhooks"]}
    if found != WEBHOOKS:
        raise KueueError(f"{manifests}: webhooks missing upstream: {sorted(WEBHOOKS - found)}")
    return out


def queue_objects(namespace: str, cpu: str | int = "1", memory: str = "1Gi", gpu: str | int = 0, *,
                  cluster_queue: str = "eft-test", local_queue: str = "eft-queue",
                  flavor: str = "default-flavor") -> list[dict]:
    """ResourceFlavor ``flavor`` (no node labels: the one node), ClusterQueue ``cluster_queue`` with a nominal
    quota of cpu / memory / nvidia.com/gpu for any namespace, LocalQueue ``local_queue`` in ``namespace``."""
    return [
        {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": flavor}, "spec": {}},
        {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {}, "queueingStrategy": "BestEffortFIFO",
                  "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                      "flavors": [{"name": flavor, "resources": [
                                          {"name": "cpu", "nominalQuota": str(cpu)},
                                          {"name": "memory", "nominalQuota": str(memory)},
                                          {"name": "nvidia.com/gpu", "nominalQuota": str(gpu)}]}]}]}},
        {"apiVersion": API, "kind": "LocalQueue", "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": cluster_queue}},
    ]


def apply_queues(kubeconfig: str | Path, namespace: str, cpu: str | int = "1", memory: str = "1Gi",
                 gpu: str | int = 0, *, cluster_queue: str = "eft-test", local_queue: str = "eft-queue",
                 flavor: str = "default-flavor", timeout: float = 60) -> dict:
    """Create (server-side apply) the ResourceFlavor, ClusterQueue and LocalQueue of ``queue_objects`` and wait
    until Kueue reports the ClusterQueue and the LocalQueue Active. ``namespace`` must exist."""
    objs = queue_objects(namespace, cpu, memory, gpu, cluster_queue=cluster_queue, local_queue=local_queue,
                         flavor=flavor)
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
            "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    t = f"--timeout={int(timeout)}s"
    kubectl(kubeconfig, "wait", "--for=condition=Active", f"clusterqueue/{cluster_queue}", t, timeout=timeout + 30)
    kubectl(kubeconfig, "wait", "--for=condition=Active", f"localqueue/{local_queue}", "-n", namespace, t,
            timeout=timeout + 30)
    return {"resourceFlavor": flavor, "clusterQueue": cluster_queue, "localQueue": local_queue,
            "namespace": namespace}


def delete_queues(kubeconfig: str | Path, namespace: str, *, cluster_queue: str = "eft-test",
                  local_queue: str = "eft-queue", flavor: str | None = None, timeout: float = 60) -> None:
    """Delete what apply_queues made (the flavor only when named: other ClusterQueues may use it). Kueue must
    still run: it removes the finalizers once no workload uses a queue."""
    kubectl(kubeconfig, "delete", "localqueue", local_queue, "-n", namespace, "--ignore-not-found",
            f"--timeout={int(timeout)}s", timeout=timeout + 30)
    kubectl(kubeconfig, "delete", "clusterqueue", cluster_queue, "--ignore-not-found", f"--timeout={int(timeout)}s",
            timeout=timeout + 30)
    if flavor:
        kubectl(kubeconfig, "delete", "resourceflavor", flavor, "--ignore-not-found", f"--timeout={int(timeout)}s",
                timeout=timeout + 30)


def purge(kubeconfig: str | Path) -> None:
    """Every Kueue object (finalizers dropped: no Kueue may be running to remove them) and the CRDs."""
    for res in KUEUE_RESOURCES:
        out = kubectl(kubeconfig, "get", f"{res}.kueue.x-k8s.io", "-A", "-o", "json", check=False)
        if out.returncode != 0:
            continue
        for item in json.loads(out.stdout)["items"]:
            md = item["metadata"]
            ns = ["-n", md["namespace"]] if md.get("namespace") else []
            if md.get("finalizers"):
                kubectl(kubeconfig, "patch", f"{res}.kueue.x-k8s.io", md["name"], *ns, "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)
    crds = [f"{res}.kueue.x-k8s.io" for res in KUEUE_RESOURCES]
    kubectl(kubeconfig, "delete", "crd", *crds, "--ignore-not-found", "--timeout=120s", timeout=180)


# --------------------------------------------------------------------------- the sleep image


def ensure_sleep_image() -> str:
    """``docker.io/eft-test/sleep:1`` in the running cluster's containerd: tests/cluster/kueue/sleep.c, static,
    in an image FROM scratch (as the pause image): ``args: ["SECONDS"]`` sleeps, then exits 0. The archive is
    built once into the cache (gcc, buildah); returns the image name (use imagePullPolicy: Never)."""
    cl = cluster_module()
    if not cl.running_state():
        raise KueueError("the cluster is not up (python tests/cluster/cluster.py up)")
    tar = CACHE_ROOT / "sleep-1.tar"
    if not tar.is_file():
        tar.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tar.parent) as work:
            binary = Path(work) / "sleep"
            cl.sh("gcc", "-Os", "-static", "-o", str(binary), str(HERE / "kueue" / "sleep.c"))
            cl.sh("strip", str(binary), check=False)
            ctr = cl.sh("buildah", "from", "scratch").stdout.strip()
            try:
                cl.sh("buildah", "copy", ctr, str(binary), "/sleep")
                cl.sh("buildah", "config", "--entrypoint", '["/sleep"]', "--user", "65534:65534", ctr)
                cl.sh("buildah", "commit", "--quiet", ctr, "eft-test/sleep:1")
            finally:
                cl.sh("buildah", "rm", ctr, check=False, quiet=True)
            cl.sh("buildah", "push", "--quiet", "eft-test/sleep:1", f"docker-archive:{tar}.tmp:{SLEEP_IMAGE}")
            cl.sh("buildah", "rmi", "eft-test/sleep:1", check=False, quiet=True)
            os.replace(f"{tar}.tmp", tar)
    ctr_cmd = ["ctr", "--address", str(cl.CONTAINERD_SOCK), "--namespace", "k8s.io"]
    if SLEEP_IMAGE not in cl.sh(*ctr_cmd, "images", "ls", "-q").stdout.split():
        cl.sh(*ctr_cmd, "images", "import", str(tar))
    return SLEEP_IMAGE


# --------------------------------------------------------------------------- the process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LIVE: set["Kueue"] = set()
_LIVE_LOCK = threading.Lock()
_HANDLERS = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for k in live:
        with contextlib.suppress(Exception):
            k.stop()


def _on_signal(signum, frame):  # SIGTERM/SIGHUP: webhooks off and Kueue stopped, then die of the same signal
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS
    if _HANDLERS:
        return
    _HANDLERS = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


# The Kueue process's wrapper: a private mount namespace in which /etc is an overlay (on a tmpfs) holding the
# metrics certificate Kueue insists on reading; then exec kueue (same pid, so signals reach it).
_WRAPPER = """set -e
mount -t tmpfs -o size=4m,mode=0700 eft-kueue "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay eft-kueue-etc -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc
mkdir -p "$3"
cp "$2/tls.crt" "$2/tls.key" "$3/"
shift 3
exec "$@"
"""


class Kueue:
    """Kueue's CRDs, its Configuration, a serving certificate, the webhook configurations and the process.

    It runs with the cluster's admin kubeconfig (group system:masters): fine for tests, and it spares the
    upstream ClusterRole (config/components/rbac/role.yaml), which a real install binds to its ServiceAccount.
    Needs root (a private mount namespace; the cluster itself needs root anyway).
    """

    def __init__(self, kubeconfig: str | Path, workdir: str | Path, binary: str | Path | None = None, *,
                 all_jobs: bool = False, build: bool = True):
        self.kubeconfig = str(kubeconfig)
        self.workdir = Path(workdir)
        self.binary = Path(binary) if binary else ensure_kueue(build=build)
        self.all_jobs = all_jobs
        self.webhook_port = 0
        self.health_port = 0
        self.proc: subprocess.Popen | None = None
        self.log_file = self.workdir / "kueue.log"
        self.state_file = self.workdir / "state.json"
        self.started_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds per start() step
        self._log = None

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    # ---- steps

    def install_crds(self, src: Path, timeout: float = 60) -> list[str]:
        """Server-side apply (the Workload CRD is ~1 MB, over client-side apply's annotation limit), then a label
        with the version: a later start finds them all labelled and skips the apply."""
        files = sorted((src / "config" / "components" / "crd" / "bases").glob("*.yaml"))
        if not files:
            raise KueueError(f"no CRDs in {src}/config/components/crd/bases")
        names = [f.name.split("_", 1)[1].removesuffix(".yaml") + "." + f.name.split("_", 1)[0] for f in files]
        labelled = kubectl(self.kubeconfig, "get", "crd", "-l", f"{CRD_LABEL}={KUEUE_VERSION}", "-o", "name").stdout
        if {ln.split("/", 1)[-1] for ln in labelled.split()} >= set(names):
            return names
        args = [a for f in files for a in ("-f", str(f))]
        kubectl(self.kubeconfig, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                *args, timeout=timeout + 60)
        kubectl(self.kubeconfig, "wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                *[f"crd/{n}" for n in names], timeout=timeout + 30)
        kubectl(self.kubeconfig, "label", "--overwrite", "crd", *names, f"{CRD_LABEL}={KUEUE_VERSION}")
        return names

    def write_config(self) -> Path:
        certs = self.workdir / "certs"
        shutil.rmtree(certs, ignore_errors=True)
        certs.mkdir(parents=True)
        pki = self.workdir / "pki"
        shutil.rmtree(pki, ignore_errors=True)
        pki.mkdir()
        generate_pki(pki)  # a CA and a serving certificate for 127.0.0.1 (and names Kueue never uses)
        shutil.copy(pki / "apiserver.crt", certs / "tls.crt")
        shutil.copy(pki / "apiserver.key", certs / "tls.key")
        shutil.copy(pki / "ca.crt", certs / "ca.crt")
        self.webhook_port = free_port()
        self.health_port = free_port()
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "leaderElection": {"leaderElect": False},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},  # off (its certificate still has to exist: see METRICS_CERT_DIR)
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(certs)},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"]},
            # the visibility API server would listen on 0.0.0.0:8082 and want certificates in /visibility
            "featureGates": {"VisibilityOnDemand": False},
            "clientConnection": {"qps": 50, "burst": 100},
        }
        path = self.workdir / "config.json"  # JSON is YAML; Kueue decodes it strictly
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def _spawn(self, config: Path) -> None:
        if os.geteuid() != 0:
            raise KueueError("Kueue runs in a private mount namespace here: run as root (as the cluster does)")
        mnt = self.workdir / "mnt"
        mnt.mkdir(exist_ok=True)
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _WRAPPER, "kueue",
                str(mnt), str(self.workdir / "certs"), METRICS_CERT_DIR,
                str(self.binary), f"--config={config}", f"--kubeconfig={self.kubeconfig}"]
        self._log = open(self.log_file, "ab")
        self._log.write(("$ " + " ".join(argv[argv.index(str(self.binary)):]) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=dict(os.environ, KUBECONFIG=self.kubeconfig),
                                     start_new_session=True, preexec_fn=_child_setup, close_fds=True)
        self.state_file.write_text(json.dumps({"pid": self.proc.pid, "webhookPort": self.webhook_port,
                                               "healthPort": self.health_port, "kubeconfig": self.kubeconfig,
                                               "log": str(self.log_file)}))

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise KueueError(f"kueue exited with {self.proc.returncode}; last lines of {self.log_file}:\n"
                             + "\n".join(self.log_file.read_text(errors="replace").splitlines()[-30:]))

    def _wait_ready(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=3) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError) as e:
                last = str(e)
            time.sleep(0.25)
        raise KueueError(f"kueue not ready at {url} ({last}); log {self.log_file}")

    def probe_webhook(self, deadline: float) -> None:
        """A server-side dry run of a labelled Job without ``suspend``: the API server calls the mutating
        webhook, which must come back with ``suspend: true``."""
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "eft-kueue-probe", "namespace": "default", "labels": {QUEUE_LABEL: "probe"}},
               "spec": {"template": {"spec": {"restartPolicy": "Never",
                                              "containers": [{"name": "c", "image": "probe"}]}}}}
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            out = kubectl(self.kubeconfig, "create", "--dry-run=server", "-o", "json", "-f", "-",
                          input=json.dumps(job), check=False, timeout=30)
            if out.returncode == 0 and json.loads(out.stdout)["spec"].get("suspend") is True:
                return
            last = (out.stderr or out.stdout).strip()[-500:]
            time.sleep(0.5)
        raise KueueError(f"the Job webhook did not suspend a labelled Job: {last}; log {self.log_file}")

    # ---- lifecycle

    def start(self, timeout: float = 120) -> "Kueue":
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        remove_webhooks(self.kubeconfig)  # what an earlier, killed run left: webhooks first, then its process
        stop_recorded(self.workdir)
        _install_handlers()
        with _LIVE_LOCK:
            _LIVE.add(self)
        mark = time.monotonic()

        def step(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            self.timings[name] = round(now - mark, 1)
            mark = now

        try:
            src = module_dir()
            self.install_crds(src)
            if kubectl(self.kubeconfig, "get", "namespace", NAMESPACE, check=False).returncode != 0:
                kubectl(self.kubeconfig, "create", "namespace", NAMESPACE)
            step("crds")
            config = self.write_config()
            step("certificates")
            self._spawn(config)
            self._wait_ready(deadline)
            step("process_ready")
            for doc in webhook_configurations(src / "config" / "components" / "webhook" / "manifests.yaml",
                                              self.webhook_port, (self.workdir / "certs" / "ca.crt").read_bytes(),
                                              self.all_jobs):
                kubectl(self.kubeconfig, "apply", "--server-side", "--force-conflicts",
                        f"--field-manager={FIELD_MANAGER}", "-f", "-", input=json.dumps(doc))
            self.probe_webhook(deadline)
            step("webhooks")
        except BaseException:
            with contextlib.suppress(Exception):  # the start's own error is the one to see
                self.stop()
            raise
        self.started_seconds = round(time.monotonic() - t0, 1)
        return self

    def stop(self, timeout: float = 10) -> None:
        """Webhook configurations first (the API server must stop calling before the process goes), then
        SIGTERM, SIGKILL after ``timeout``. Idempotent; the CRDs and the queues stay."""
        try:
            remove_webhooks(self.kubeconfig)
        finally:
            p = self.proc
            if p is not None and p.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        os.killpg(p.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(timeout=5)
            if self._log is not None:
                self._log.close()
                self._log = None
            self.state_file.unlink(missing_ok=True)
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def __enter__(self) -> "Kueue":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def info(self) -> dict:
        return {"kueue": KUEUE_VERSION, "binary": str(self.binary), "pid": self.proc.pid if self.proc else None,
                "webhook": self.webhook_url, "health": f"http://127.0.0.1:{self.health_port}",
                "log": str(self.log_file), "workdir": str(self.workdir), "started_seconds": self.started_seconds,
                "timings": self.timings}


def stop_recorded(workdir: Path) -> bool:
    """Kill the Kueue process a state file in ``workdir`` names (one a killed `up` or test left running)."""
    state_file = Path(workdir) / "state.json"
    try:
        pid = int(json.loads(state_file.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    alive = False
    with contextlib.suppress(OSError):
        exe = os.readlink(f"/proc/{pid}/exe")
        alive = Path(exe).name == "kueue"
    if alive:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    return alive


# --------------------------------------------------------------------------- CLI


def default_workdir() -> Path:
    """Under the cluster's run folder: `cluster.py down` removes it and kills a Kueue left running there."""
    return cluster_module().RUN_DIR / "kueue"


def _cluster_kubeconfig() -> str:
    state = cluster_module().running_state()
    if not state:
        raise KueueError("the cluster is not up (python tests/cluster/cluster.py up)")
    return state["kubeconfig"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help=f"build kueue {KUEUE_VERSION} into {cache_dir()} when missing")
    up = sub.add_parser("up", help="install into the running cluster and run Kueue in the foreground")
    up.add_argument("--all-jobs", action="store_true", help="Job webhooks for every Job, as upstream")
    d = sub.add_parser("down", help="stop a Kueue left running, delete its webhook configurations")
    d.add_argument("--purge", action="store_true", help="also delete every Kueue object and the CRDs")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            t0 = time.monotonic()
            summary = build_kueue()
            print(json.dumps(dict(summary, total_seconds=round(time.monotonic() - t0, 1))))
        elif args.cmd == "up":
            k = Kueue(_cluster_kubeconfig(), default_workdir(), all_jobs=args.all_jobs)

            def on_term(signum, frame):
                raise KeyboardInterrupt

            signal.signal(signal.SIGTERM, on_term)
            k.start()
            print(json.dumps(k.info()), flush=True)
            log("running; Ctrl-C (or `python tests/cluster/kueue.py down`) stops it")
            try:
                while k.proc.poll() is None:
                    time.sleep(1)
                log(f"kueue exited with {k.proc.returncode} (log {k.log_file})")
            except KeyboardInterrupt:
                pass
            finally:
                k.stop()
        elif args.cmd == "down":
            kubeconfig = _cluster_kubeconfig()
            removed = remove_webhooks(kubeconfig)  # first: the API server must stop calling a dying Kueue
            stopped = stop_recorded(default_workdir())
            if args.purge:
                purge(kubeconfig)
            print(json.dumps({"stopped": stopped, "removed": removed, "purged": args.purge}))
        return 0
    except KueueError as e:
        print(f"kueue.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
