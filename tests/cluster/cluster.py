#!/usr/bin/env python3
"""A real single-node Kubernetes cluster on this machine, for the end-to-end tier (tests/e2e).

The control plane of tests/support/controlplane.py (etcd, kube-apiserver, kube-controller-manager)
plus what makes pods really run: kube-scheduler, kubelet and kube-proxy (built by
tests/controlplane/build.py from the same Kubernetes module), containerd + runc + the CNI plugins
(Debian packages), a pause image compiled from the module's pause.c, and the controller-manager's
host-path provisioner as the default StorageClass. No DNS: nothing in the tests resolves cluster names.

    python tests/cluster/cluster.py install-host   # apt-get the Debian packages (root)
    python tests/cluster/cluster.py up             # start it in the background, print the kubeconfig
    python tests/cluster/cluster.py status
    python tests/cluster/cluster.py load-image NAME [NAME...]   # podman/buildah image -> the node's containerd
    python tests/cluster/cluster.py down           # stop it; the host is left as it was

Network: every listener is on 127.0.0.1 or on the pod bridge's own address (10.244.0.1), never on the
machine's external interface. The API server binds the bridge address so that pods (the operator runs
as one) reach it through the ``kubernetes`` Service; the node's InternalIP is the same address.

Needs root (containerd, mounts, iptables, a bridge). ``down`` undoes everything ``up`` did to the host:
processes and shims, mounts under the cluster's folders, the bridge, iptables chains, cgroups, sysctls.
Images imported into containerd stay in a cache folder (``--purge`` removes them too).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO))  # appended: the repository's operator/ must not shadow the stdlib's operator
from tests.support.controlplane import ControlPlane, ControlPlaneError, load_build_module  # noqa: E402

BRIDGE = "eft0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"  # the bridge's address: API server, node IP
SERVICE_CIDR = "10.96.0.0/16"
API_PORT = 6443
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
HOSTPATH_PV_DIR = Path("/tmp/hostpath_pv")  # fixed by the controller-manager's host-path provisioner
PACKAGES = ["containerd", "runc", "containernetworking-plugins", "iptables", "iproute2", "buildah", "podman",
            "mmdebstrap", "gcc", "libc6-dev"]
CNI_BIN = Path("/usr/lib/cni")
# sysctls that the bridge plugin or kube-proxy may change: recorded at `up`, restored at `down`
SYSCTLS = ["net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables"]

RUN_DIR = Path(os.environ.get("EFT_CLUSTER_RUN_DIR", "/var/lib/eft-cluster"))
CACHE_DIR = Path(os.environ.get("EFT_CLUSTER_CACHE") or (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eft" / "cluster"))
LOG_DIR = Path(os.environ.get("EFT_CLUSTER_LOG_DIR", "/tmp/eft-cluster-logs"))
STATE_FILE = RUN_DIR / "state.json"
CONTAINERD_SOCK = RUN_DIR / "containerd" / "containerd.sock"


class ClusterError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, check: bool = True, quiet: bool = False, input: str | None = None,
       timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    if not quiet and proc.returncode != 0:
        log(f"(ignored) {' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()[:200]}")
    return proc


# --------------------------------------------------------------------------- host requirements


def missing_host_requirements() -> list[str]:
    """What this machine lacks to run the cluster (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (containerd, mounts, iptables and a network bridge need it)")
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "iptables", "ip", "buildah", "podman",
                 "mmdebstrap", "gcc"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}`")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_BIN / plugin).is_file():
            problems.append(f"the CNI plugin {CNI_BIN / plugin}")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        problems.append("the `cryptography` Python package (certificates)")
    return problems


def install_host() -> None:
    """apt-get the Debian packages the cluster and the image builds need (root only)."""
    if not missing_host_requirements():
        log("host packages present")
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterError("the real cluster needs root and these Debian packages: " + " ".join(PACKAGES)
                           + " (install them, or run as root on Debian/Ubuntu so this step can)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    t0 = time.monotonic()
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    log(f"installed {' '.join(PACKAGES)} in {time.monotonic() - t0:.0f}s")


# --------------------------------------------------------------------------- pause image


def pause_source() -> Path:
    """build/pause/linux/pause.c of the pinned Kubernetes module (in the Go module cache)."""
    build = load_build_module()
    go = build.find_go()
    if go is None:
        raise ClusterError("Go is needed to locate the Kubernetes module (pause.c)")
    version = build.versions()["k8s"]
    out = subprocess.run([go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                         cwd=build.MODULES["k8s"]["dir"], env=build.go_env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise ClusterError(f"go mod download k8s.io/kubernetes@{version}: {out.stderr.strip()[-500:]}")
    src = Path(json.loads(out.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    if not src.is_file():
        raise ClusterError(f"{src} is missing")
    return src


def pause_archive() -> Path:
    """A docker-archive of the pause image (FROM scratch, one static binary), built once into the cache."""
    tar = CACHE_DIR / "pause-3.10.tar"
    if tar.is_file():
        return tar
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = CACHE_DIR / "pause-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    sh("gcc", "-Os", "-static", "-DVERSION=3.10-eft", "-o", str(work / "pause"), str(pause_source()))
    sh("strip", str(work / "pause"), check=False)
    ctr = sh("buildah", "from", "scratch").stdout.strip()
    try:
        sh("buildah", "copy", ctr, str(work / "pause"), "/pause")
        sh("buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
        sh("buildah", "commit", "--quiet", ctr, "eft-test/pause:3.10")
    finally:
        sh("buildah", "rm", ctr, check=False, quiet=True)
    sh("buildah", "push", "--quiet", "eft-test/pause:3.10", f"docker-archive:{tar}.tmp:{PAUSE_IMAGE}")
    os.replace(f"{tar}.tmp", tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


# --------------------------------------------------------------------------- config files


def node_name() -> str:
    """The machine's hostname when it resolves to loopback (the API server reaches the kubelet by it)."""
    import socket

    name = socket.gethostname().lower()
    try:
        if socket.gethostbyname(name).startswith("127."):
            return name
    except OSError:
        pass
    return "localhost"


def write_configs(run: Path, cp: ControlPlane, node: str, node_token: str) -> dict[str, Path]:
    paths = {}
    cni_conf = run / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)
    (cni_conf / "10-eft.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "eft-pods",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(run / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=1))
    cd = run / "containerd"
    cd.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "containerd").mkdir(parents=True, exist_ok=True)
    paths["containerd"] = cd / "config.toml"
    paths["containerd"].write_text(f"""version = 2
root = "{CACHE_DIR / 'containerd'}"
state = "{cd / 'state'}"
[grpc]
  address = "{CONTAINERD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # the machine lacks CAP_SYS_RESOURCE: no process may lower its oom_score_adj (runc would fail)
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
""")
    ca = base64.b64encode(Path(cp.ca_file).read_bytes()).decode()

    def kubeconfig(path: Path, user: str, token: str) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": cp.server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": user}}]}))
        path.chmod(0o600)
        return path

    paths["node-kubeconfig"] = kubeconfig(run / "node.kubeconfig", f"system:node:{node}", node_token)
    paths["kubelet"] = run / "kubelet.yaml"
    paths["kubelet"].write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": "127.0.0.1", "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "cgroupDriver": "cgroupfs", "failSwapOn": False, "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": cp.ca_file}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # a test node: never evict for disk, never garbage-collect the imported images (nothing can be pulled)
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 64,
    }))
    paths["kube-proxy"] = run / "kube-proxy.yaml"
    paths["kube-proxy"].write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": cp.kubeconfig},
        "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": node,
        "bindAddress": "127.0.0.1", "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # leave the host's sysctls alone: no localhost NodePorts (route_localnet), no conntrack tuning
        "iptables": {"localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }))
    return paths


# --------------------------------------------------------------------------- host state


def read_sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        p = Path("/proc/sys") / key
        if p.exists():
            out[key] = p.read_text().strip()
    return out


def restore_sysctls(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        p = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if p.exists() and p.read_text().strip() != value:
                p.write_text(value)


def create_bridge() -> None:
    if sh("ip", "link", "show", BRIDGE, check=False, quiet=True).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = sh("ip", "-4", "-o", "addr", "show", "dev", BRIDGE).stdout
    if f"{GATEWAY}/" not in addrs:
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def _mounts_under(prefixes: list[str]) -> list[str]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].encode().decode("unicode_escape")
        if any(target == p or target.startswith(p.rstrip("/") + "/") for p in prefixes):
            out.append(target)
    return out


def unmount_all(prefixes: list[str]) -> None:
    for _ in range(5):
        targets = _mounts_under(prefixes)
        if not targets:
            return
        for t in sorted(targets, key=len, reverse=True):
            sh("umount", "-l", t, check=False, quiet=True)
    left = _mounts_under(prefixes)
    if left:
        log(f"mounts left: {left[:5]}")


def kill_shims() -> None:
    """containerd-shim-runc-v2 processes started for this cluster's containerd (and their containers)."""
    sock = str(CONTAINERD_SOCK)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in b" ".join(cmd):
            with contextlib.suppress(OSError):
                os.killpg(int(proc.name), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


def iptables_chains() -> list[str]:
    """"tool table chain" of every KUBE-*/CNI-* chain now (podman's CNI keeps chains of its own)."""
    out = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            for r in sh(tool, "-t", table, "-S", check=False, quiet=True).stdout.splitlines():
                if r.startswith("-N ") and r.split()[1].startswith(("KUBE-", "CNI-")):
                    out.append(f"{tool} {table} {r.split()[1]}")
    return out


def remove_iptables_chains(existing: list[str]) -> None:
    """The KUBE-*/CNI-* chains this cluster made (not those in ``existing``, recorded at `up`), the rules
    jumping to them, and rules for its pod network left in chains it shares (kube-proxy --cleanup leaves
    some; a killed pod's CNI DEL never ran). IPv4 and IPv6."""
    keep = set(existing)
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            rules = sh(tool, "-t", table, "-S", check=False, quiet=True).stdout.splitlines()
            mine = {r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(("KUBE-", "CNI-"))
                    and f"{tool} {table} {r.split()[1]}" not in keep}
            for rule in rules:
                if not rule.startswith("-A "):
                    continue
                words = shlex.split(rule)
                target = words[words.index("-j") + 1] if "-j" in words else ""
                if target in mine or (words[1] not in mine and POD_CIDR.rsplit(".", 1)[0] + "." in rule):
                    sh(tool, "-t", table, "-D", *words[1:], check=False, quiet=True)
            for chain in mine:
                sh(tool, "-t", table, "-F", chain, check=False, quiet=True)
            for chain in mine:
                sh(tool, "-t", table, "-X", chain, check=False, quiet=True)


def _kubepods_dirs() -> list[Path]:
    roots = [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir()] + [Path("/sys/fs/cgroup")]
    return [root / top for root in roots for top in ("kubepods", "kubepods.slice") if (root / top).is_dir()]


def kill_pod_processes(timeout: float = 10) -> None:
    """Every process in the kubelet's pod cgroups: containers outlive their shims (runc reparents them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for d in _kubepods_dirs():
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    log("processes left in the kubepods cgroups")


def remove_cgroups() -> None:
    """The kubelet's kubepods hierarchy (cgroupfs driver) in every cgroup v1 controller and in cgroup2."""
    for d in _kubepods_dirs():
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """Start and stop the node's processes; the control plane is a ControlPlane with real-node flags."""

    def __init__(self) -> None:
        build = load_build_module()
        binaries = build.ensure_binaries(build=False)
        if binaries is None:
            raise ClusterError(f"Kubernetes binaries missing in {build.bin_dir()}: run `make controlplane`")
        self.binaries = binaries
        self.node = node_name()
        self.node_token = "eft-node-" + os.urandom(12).hex()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.cp = ControlPlane(
            binaries, workdir=RUN_DIR / "controlplane", versions=build.versions(),
            bind_address=GATEWAY, port=API_PORT,
            extra_tokens=(f'{self.node_token},system:node:{self.node},system:node:{self.node},"system:nodes"',),
            client_certs={"apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"])},
            apiserver_flags=(
                f"--kubelet-client-certificate={RUN_DIR / 'controlplane' / 'pki' / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={RUN_DIR / 'controlplane' / 'pki' / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=Hostname,InternalIP",
                "--enable-admission-plugins=NodeRestriction",
            ),
            controller_flags=("--controllers=*", "--enable-hostpath-provisioner=true",
                              f"--cluster-cidr={POD_CIDR}", "--allocate-node-cidrs=false"),
        )

    # ---- up

    def start(self, timeout: float = 120) -> dict:
        t0 = time.monotonic()
        problems = missing_host_requirements()
        if problems:
            raise ClusterError("cannot start the real cluster; missing: " + ", ".join(problems)
                               + " (run `make cluster-host` as root)")
        if HOSTPATH_PV_DIR.exists() and not (RUN_DIR / "hostpath-ours").exists():
            raise ClusterError(f"{HOSTPATH_PV_DIR} exists and is not this cluster's: refusing to reuse it")
        state = {"sysctls": read_sysctls(), "started": time.time(), "supervisor": os.getpid(),
                 "iptablesChains": iptables_chains()}
        state["hostpathCreated"] = not HOSTPATH_PV_DIR.exists()
        STATE_FILE.write_text(json.dumps(state))
        (RUN_DIR / "hostpath-ours").touch()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        pause = pause_archive()
        create_bridge()
        self.cp.start(timeout=timeout)
        paths = write_configs(RUN_DIR, self.cp, self.node, self.node_token)
        self.cp._spawn("containerd", ["containerd", "--config", str(paths["containerd"])])
        self._wait(lambda: CONTAINERD_SOCK.exists(), "containerd socket", 30)
        self.ctr("images", "import", str(pause))
        b = self.binaries
        self.cp._spawn("kube-scheduler", [b["kube-scheduler"], f"--kubeconfig={self.cp.kubeconfig}",
                                          "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
                                          "--v=1"])
        self.cp._spawn("kubelet", [b["kubelet"], f"--config={paths['kubelet']}",
                                   f"--kubeconfig={paths['node-kubeconfig']}", f"--hostname-override={self.node}",
                                   f"--node-ip={GATEWAY}", f"--root-dir={RUN_DIR / 'kubelet'}",
                                   f"--cert-dir={RUN_DIR / 'kubelet-pki'}", "--v=1"])
        self.cp._spawn("kube-proxy", [b["kube-proxy"], f"--config={paths['kube-proxy']}", "--v=1"])
        self._wait(self._node_ready, f"node {self.node} Ready", timeout)
        self.cp.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/host-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"}))
        info = {"kubeconfig": self.cp.kubeconfig, "server": self.cp.server, "node": self.node,
                "started_seconds": round(time.monotonic() - t0, 1), "logs": str(self.cp.log_dir)}
        state.update(info)
        STATE_FILE.write_text(json.dumps(state))
        return info

    def ctr(self, *args: str, timeout: float = 1200) -> str:
        return sh("ctr", "--address", str(CONTAINERD_SOCK), "--namespace", "k8s.io", *args, timeout=timeout).stdout

    def _node_ready(self) -> bool:
        out = self.cp.kubectl("get", "node", self.node, "-o", "json", check=False).stdout
        try:
            conds = json.loads(out)["status"]["conditions"]
        except (ValueError, KeyError):
            return False
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def _wait(self, ok, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cp._check_alive()
            if ok():
                return
            time.sleep(0.3)
        raise ClusterError(f"timed out waiting for {what}; logs in {self.cp.log_dir}")

    def fix_volume_permissions(self) -> None:
        """The test StorageClass's stand-in for fsGroup: a CSI driver makes a new volume writable by the
        pod's fsGroup, the host-path provisioner makes it 0750 root:root. Open each new one to every uid."""
        if not HOSTPATH_PV_DIR.is_dir():
            return
        for d in HOSTPATH_PV_DIR.iterdir():
            with contextlib.suppress(OSError):
                if d.is_dir() and (d.stat().st_mode & 0o7777) != 0o1777:
                    d.chmod(0o1777)

    def serve_forever(self) -> None:
        """The supervisor's loop: keep the node's stand-in for fsGroup going, notice a dead component."""
        while True:
            self.fix_volume_permissions()
            try:
                self.cp._check_alive()
            except ControlPlaneError as e:
                log(str(e))
                return
            time.sleep(0.2)

    def stop(self) -> None:
        # last started first: kube-proxy and the kubelet before containerd, etcd last; the pods' shims and
        # network namespaces go in teardown_host (a test node has no pods worth a graceful drain)
        self.cp.stop()


def kill_cluster_processes() -> None:
    """Every process whose command line names the cluster's run folder (what a killed supervisor left)."""
    marker = str(RUN_DIR).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmd and b"cluster.py" not in cmd:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


def teardown_host(state: dict) -> None:
    """Everything a (possibly killed) cluster leaves on the host; idempotent."""
    kube_proxy = None
    with contextlib.suppress(Exception):
        kube_proxy = load_build_module().bin_dir() / "kube-proxy"
    if kube_proxy is not None and kube_proxy.is_file():
        sh(str(kube_proxy), "--cleanup", check=False, quiet=True)
    kill_shims()
    kill_pod_processes()
    unmount_all([str(RUN_DIR), str(CACHE_DIR / "containerd")])
    for target in _mounts_under(["/run/netns", "/var/run/netns"]):
        if Path(target).name.startswith("cni-"):
            sh("umount", "-l", target, check=False, quiet=True)
    for ns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
        sh("ip", "netns", "delete", ns.name, check=False, quiet=True)
    remove_iptables_chains(state.get("iptablesChains") or [])
    # veth ends of pods whose sandbox was killed (their network namespaces are gone with the processes)
    for line in sh("ip", "-o", "link", "show", "master", BRIDGE, check=False, quiet=True).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        sh("ip", "link", "delete", name, check=False, quiet=True)
    if sh("ip", "link", "show", BRIDGE, check=False, quiet=True).returncode == 0:
        sh("ip", "link", "delete", BRIDGE, check=False)
    remove_cgroups()
    restore_sysctls(state.get("sysctls") or {})
    if state.get("hostpathCreated") and HOSTPATH_PV_DIR.exists():
        shutil.rmtree(HOSTPATH_PV_DIR, ignore_errors=True)
    if RUN_DIR.exists():
        logs = RUN_DIR / "controlplane" / "logs"
        if logs.is_dir():
            shutil.copytree(logs, LOG_DIR, dirs_exist_ok=True)
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def host_snapshot() -> dict[str, list[str]]:
    """What a cluster could leave on the host, for comparing before `up` and after `down`."""
    def lines(*cmd: str) -> list[str]:
        return sh(*cmd, check=False, quiet=True).stdout.splitlines() if shutil.which(cmd[0]) else []

    # User chains only (policy "-"): a table's built-in chains (":INPUT ACCEPT") appear the first time anything
    # uses the table on this host and cannot be removed; a fresh machine's ip6tables has none before `up`.
    chains = sorted({ln.split()[0] + " " + tool for tool in ("iptables-save", "ip6tables-save")
                     for ln in lines(tool) if ln.startswith(":") and ln.split()[1:2] == ["-"]})
    rules = sorted(ln for tool in ("iptables-save", "ip6tables-save") for ln in lines(tool) if ln.startswith("-A"))
    links = sorted(ln.split(":")[1].strip().split("@")[0] for ln in lines("ip", "-o", "link"))
    mounts = sorted(ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines())
    procs = sorted({(Path(f"/proc/{p.name}/comm").read_text().strip() if (p / "comm").exists() else "")
                    for p in Path("/proc").iterdir() if p.name.isdigit()} & {
        "etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kubelet", "kube-proxy", "containerd",
        "containerd-shim", "pause"})
    return {"iptables chains": chains, "iptables rules": rules, "links": links, "mounts": mounts,
            "sysctls": [f"{k}={v}" for k, v in sorted(read_sysctls().items())],
            "cgroups": [str(d) for d in _kubepods_dirs()], "processes": procs,
            "folders": [str(p) for p in (RUN_DIR, HOSTPATH_PV_DIR) if p.exists()]}


def _not_the_clusters(key: str, item: str, side: str) -> bool:
    """Differences a cluster's `up`/`down` does not own, so they never fail the teardown check:
    - podman's own network (the bridge a `podman build` RUN step creates, and its CNI rules on 10.88.0.0/16):
      the e2e tier builds its images with podman between `up` and `down`;
    - kube-proxy's KUBE-* chains and rules present before `up` and gone after `down`: `kube-proxy --cleanup`
      removes every KUBE-* chain on the host, so chains an earlier kube-proxy left (a killed cluster, another
      run on the same host) go too; they never belonged to anything still running (one cluster at a time)."""
    if key == "links":
        return item.startswith(("cni-podman", "podman"))
    if key.startswith("iptables"):
        if '"podman"' in item or "10.88." in item:
            return True
        return side == "gone" and "KUBE-" in item
    return False


def snapshot_difference(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, dict]:
    """What `down` left on the host that `up` found otherwise (differences the cluster does not own aside)."""
    out = {}
    for key in before.keys() | after.keys():
        b, a = set(before.get(key, [])), set(after.get(key, []))
        left = sorted(x for x in a - b if not _not_the_clusters(key, x, "left behind"))
        gone = sorted(x for x in b - a if not _not_the_clusters(key, x, "gone"))
        if left or gone:
            out[key] = {"left behind": left, "gone": gone}
    return out


# --------------------------------------------------------------------------- supervisor / CLI


def read_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def running_state() -> dict | None:
    """The state of a cluster that is up and answering (None otherwise)."""
    state = read_state()
    if not state or not state.get("kubeconfig"):
        return None
    pid = state.get("supervisor")
    if not pid or not Path(f"/proc/{pid}").exists():
        return None

    try:
        ctx = ssl.create_default_context(cafile=str(RUN_DIR / "controlplane" / "pki" / "ca.crt"))
        with urllib.request.urlopen(state["server"] + "/livez", context=ctx, timeout=3):
            return state
    except urllib.error.HTTPError:  # 401/403: it answers
        return state
    except (OSError, ssl.SSLError):
        return None


def _supervise(ready_fd: int) -> None:
    """Runs in the detached supervisor process: start, report, serve until SIGTERM, stop."""
    cluster = None
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with os.fdopen(ready_fd, "w") as ready:
        try:
            cluster = Cluster()
            info = cluster.start()
            ready.write(json.dumps(info) + "\n")
        except BaseException as e:  # noqa: BLE001 - reported to `up`, then everything is undone
            ready.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
            ready.flush()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.cp.stop()
            teardown_host(read_state() or {})
            return
    try:
        cluster.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        state = read_state() or {}
        cluster.stop()
        teardown_host(state)


def up(timeout: float = 240) -> dict:
    state = running_state()
    if state:
        log(f"already up (kubeconfig {state['kubeconfig']})")
        return state
    if read_state():
        log("a previous cluster did not stop cleanly: cleaning up first")
        down()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # supervisor: its own session, output to a log file
        os.close(rfd)
        os.setsid()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        out = os.open(str(LOG_DIR / "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        try:
            _supervise(wfd)
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as r:
        line = r.readline()
    if not line:
        raise ClusterError(f"the cluster supervisor died while starting; see {LOG_DIR / 'supervisor.log'}")
    info = json.loads(line)
    if "error" in info:
        raise ClusterError(f"{info['error']}\n(logs: {LOG_DIR})")
    return info


def down(purge: bool = False, timeout: float = 120) -> None:
    state = read_state() or {}
    pid = state.get("supervisor")
    if pid and Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    kill_cluster_processes()  # whatever a killed supervisor left behind (none after a clean stop)
    teardown_host(state)
    if purge:
        unmount_all([str(CACHE_DIR)])
        shutil.rmtree(CACHE_DIR, ignore_errors=True)


def load_images(names: list[str]) -> dict[str, float]:
    """Copy images from the local podman/buildah store into the node's containerd (seconds per image)."""
    state = running_state()
    if not state:
        raise ClusterError("the cluster is not up (python tests/cluster/cluster.py up)")
    seconds = {}
    # containerd's store lives in the cache across clusters: skip an image whose podman ID was loaded before
    record_file = CACHE_DIR / "loaded-images.json"
    try:
        loaded = json.loads(record_file.read_text())
    except (OSError, ValueError):
        loaded = {}
    present = set(sh("ctr", "--address", str(CONTAINERD_SOCK), "--namespace", "k8s.io", "images", "ls", "-q").stdout.split())
    for name in names:
        image_id = sh("podman", "image", "inspect", "--format", "{{.Id}}", name).stdout.strip()
        if loaded.get(name) == image_id and (name in present or f"docker.io/{name}" in present):
            seconds[name] = 0.0
            log(f"{name} is already on the node")
            continue
        t0 = time.monotonic()
        # streamed: a temporary archive would take as much disk as the image (8.9 GB for the stage image)
        # and could push the node into disk pressure
        save = subprocess.Popen(["podman", "save", "--quiet", "--format", "docker-archive", name],
                                stdout=subprocess.PIPE)
        imp = subprocess.run(["ctr", "--address", str(CONTAINERD_SOCK), "--namespace", "k8s.io", "images",
                              "import", "-"], stdin=save.stdout, capture_output=True, text=True, timeout=1800)
        save.stdout.close()
        if save.wait(timeout=60) != 0 or imp.returncode != 0:
            raise ClusterError(f"loading {name} into the node failed: {imp.stderr.strip()[-1000:]}")
        seconds[name] = round(time.monotonic() - t0, 1)
        loaded[name] = image_id
        record_file.write_text(json.dumps(loaded, indent=1))
        log(f"loaded {name} into the node in {seconds[name]}s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install-host", help="apt-get the Debian packages (root)")
    sub.add_parser("up", help="start the cluster in the background; prints its kubeconfig path")
    sub.add_parser("status", help="print the running cluster's state (exit 1 when none)")
    d = sub.add_parser("down", help="stop it and undo its changes to the host")
    d.add_argument("--purge", action="store_true", help="also remove the cache (imported images, pause image)")
    li = sub.add_parser("load-image", help="podman/buildah images -> the node's containerd")
    li.add_argument("names", nargs="+")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "install-host":
            install_host()
        elif args.cmd == "up":
            info = up()
            print(json.dumps(info))
        elif args.cmd == "status":
            state = running_state()
            print(json.dumps(state) if state else "not running")
            return 0 if state else 1
        elif args.cmd == "down":
            down(purge=args.purge)
        elif args.cmd == "load-image":
            print(json.dumps(load_images(args.names)))
        return 0
    except (ClusterError, ControlPlaneError) as e:
        print(f"cluster.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
