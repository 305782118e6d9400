"""A real Kubernetes control plane for the tests: etcd + kube-apiserver + kube-controller-manager.

Used as a pytest plugin (``pytest_plugins = ["tests.support.controlplane"]``). Fixtures:

``control_plane`` (session)
    A running :class:`ControlPlane` on 127.0.0.1 (free ports, TLS with a test CA, RBAC,
    an admin token in group ``system:masters``, service-account token signing, all
    default controllers but node-lifecycle). Attributes: ``kubeconfig``, ``server``,
    ``token``, ``ca_file``, ``workdir``, ``binaries``, ``versions``; methods
    ``api_client(token=None)``, ``env()``, ``kubectl(*args)``, ``helm(*args)``,
    ``service_account_token(namespace, name, ...)``, ``pids()``.
``kube_api`` (session)
    ``control_plane.api_client()`` (admin).
``kube_namespace`` (function)
    Name of a fresh namespace (its ``default`` ServiceAccount already exists); deleted after.
``sa_token`` (function)
    Factory ``sa_token(namespace, name, create=True, audiences=None, expiration_seconds=3600)``
    returning a bearer token from the TokenRequest API.
``control_plane_binaries`` (session)
    dict name -> path of etcd, kube-apiserver, kube-controller-manager, kubectl, helm
    (skips/fails like ``control_plane`` when missing).
``fake_kubelet`` (session)
    :class:`tests.support.kubelet.FakeKubelet` with a Ready fake Node registered.

The binaries come from ``tests/controlplane/build.py`` (its cache folder). When they are
missing the kube tests SKIP locally, FAIL when ``CI=true``, and are built first when
``EFT_BUILD_CONTROLPLANE=1``. Logs (and etcd's data) go to a temp folder that is kept and
printed when a test failed (or ``EFT_KEEP_CONTROLPLANE_LOGS=1``), removed otherwise.

Outside pytest: ``python -m tests.support.controlplane`` starts one and waits (Ctrl-C stops it).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.modules import load_file_module
from tests.support.paths import REPO  # noqa: E402

BUILD_PY = REPO / "tests" / "controlplane" / "build.py"
SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
WORKDIR_PREFIX = "eft-controlplane-"


def load_build_module():
    """tests/controlplane/build.py as a module (it lives in a folder that is no package)."""
    return load_file_module("eft_controlplane_build", BUILD_PY)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _child_setup() -> None:  # runs in the child between fork and exec
    # die with the parent, even when pytest is SIGKILLed (Linux only)
    if _libc is not None and sys.platform.startswith("linux"):
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def generate_pki(d: Path, extra_ips: tuple[str, ...] = (), client_certs: dict | None = None) -> None:
    """ca.crt/ca.key, apiserver.crt/.key (SAN 127.0.0.1, localhost, kubernetes.*, extra_ips), sa.key/sa.pub.

    ``client_certs`` (file stem -> (common name, [groups])) adds client certificates signed by the CA,
    such as the one the apiserver shows the kubelet; they need the ``cryptography`` package.
    """
    sans_dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local"]
    sans_ip = ["127.0.0.1", "10.96.0.1", *extra_ips]
    try:
        _generate_pki_cryptography(d, sans_dns, sans_ip, client_certs or {})
        return
    except ImportError:
        if client_certs:
            raise
    if not shutil.which("openssl"):
        raise RuntimeError("need the `cryptography` package or the `openssl` CLI to make test certificates")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=eft-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)
    san = ",".join([f"DNS:{n}" for n in sans_dns] + [f"IP:{i}" for i in sans_ip])
    (d / "apiserver.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext", cwd=d)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def _generate_pki_cryptography(d: Path, sans_dns: list[str], sans_ip: list[str],
                               client_certs: dict[str, tuple[str, list[str]]]) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k, name):
        (d / name).write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=3650)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eft-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    srv_key = key()
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
           .issuer_name(ca_name).public_key(srv_key.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName(n) for n in sans_dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in sans_ip]),
               critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
           .sign(ca_key, hashes.SHA256()))
    for stem, (cn, groups) in client_certs.items():
        ck = key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]
                            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(ck.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write_key(ck, f"{stem}.key")
        (d / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    sa_key = key()
    write_key(ca_key, "ca.key")
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_key(srv_key, "apiserver.key")
    (d / "apiserver.crt").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    write_key(sa_key, "sa.key")
    (d / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _sweep_stale_workdirs() -> None:
    """Remove work dirs of runners that were SIGKILLed (owner dead, logs not marked KEPT)."""
    for d in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            pid = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if (d / "KEPT").exists() or pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- process registry

_LIVE: set["ControlPlane"] = set()
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        planes = list(_LIVE)
    for cp in planes:
        cp.stop()


def _on_signal(signum, frame):  # SIGTERM/SIGHUP: stop the children, then die of the same signal
    with _LIVE_LOCK:
        dirs = [str(cp.workdir) for cp in _LIVE]
    _stop_all()
    for d in dirs:
        with contextlib.suppress(OSError):
            (Path(d) / "KEPT").touch()
    if dirs:
        print(f"control plane stopped by signal {signum}; logs kept in {', '.join(dirs)}", file=sys.stderr)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


# --------------------------------------------------------------------------- control plane


class ControlPlaneError(RuntimeError):
    pass


class KubeTools:
    """kubectl and helm against one cluster: its KUBECONFIG, the built binaries first on PATH, a helm home
    of its own. Subclasses set ``kubeconfig``, ``tool_dir`` (the binaries) and ``workdir``."""

    kubeconfig: str
    tool_dir: Path
    workdir: Path
    kubectl_timeout: float = 60
    helm_timeout: float = 120

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        env["PATH"] = str(self.tool_dir) + os.pathsep + env.get("PATH", "")
        env["HELM_CACHE_HOME"] = str(self.workdir / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(self.workdir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.workdir / "helm" / "data")
        env.update(extra)
        return env

    def _tool(self, tool: str, args, check: bool, input: str | None, timeout: float | None):
        proc = subprocess.run([str(self.tool_dir / tool), *map(str, args)], env=self.env(), input=input, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"{tool} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def kubectl(self, *args, check: bool = True, input: str | None = None, timeout: float | None = None):
        return self._tool("kubectl", args, check, input, timeout or self.kubectl_timeout)

    def helm(self, *args, check: bool = True, input: str | None = None, timeout: float | None = None):
        return self._tool("helm", args, check, input, timeout or self.helm_timeout)


class ControlPlane(KubeTools):
    """etcd + kube-apiserver + kube-controller-manager as child processes."""

    def __init__(self, binaries: dict[str, str], workdir: Path | None = None, versions: dict | None = None, *,
                 bind_address: str = "127.0.0.1", port: int | None = None, extra_tokens: tuple[str, ...] = (),
                 client_certs: dict | None = None, apiserver_flags: tuple[str, ...] | None = None,
                 controller_flags: tuple[str, ...] | None = None):
        """The defaults are the API-server-only tier; tests/cluster/cluster.py (a real node) passes the rest:
        an address pods can route to, kubelet credentials, and flags for a cluster with a kubelet."""
        self.binaries = dict(binaries)
        self.tool_dir = Path(self.binaries["kube-apiserver"]).parent
        self.bind_address = bind_address
        self.extra_tokens = tuple(extra_tokens)
        self.client_certs = dict(client_certs or {})
        # the "kubernetes" Service's Endpoints may not point at loopback: don't reconcile them
        self.apiserver_flags = tuple(apiserver_flags if apiserver_flags is not None
                                     else ("--endpoint-reconciler-type=none",))
        # no kubelet: nothing would renew node leases, so the node lifecycle controller would taint the
        # fake node and evict its pods
        self.controller_flags = tuple(controller_flags if controller_flags is not None
                                      else ("--controllers=*,-node-lifecycle-controller",))
        self.versions = dict(versions or {})
        if workdir is None:
            _sweep_stale_workdirs()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self.log_dir = self.workdir / "logs"
        self.pki = self.workdir / "pki"
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self.ca_file = str(self.pki / "ca.crt")
        self.token = "eft-admin-" + uuid.uuid4().hex
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = port or free_port()
        self.server = f"https://{bind_address}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self.started_seconds: float | None = None

    # ---- lifecycle

    def start(self, wait: bool = True, timeout: float = 90) -> "ControlPlane":
        t0 = time.monotonic()
        _install_handlers()
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki.mkdir(parents=True, exist_ok=True)
        extra_ips = () if self.bind_address == "127.0.0.1" else (self.bind_address,)
        generate_pki(self.pki, extra_ips, self.client_certs)
        (self.pki / "tokens.csv").write_text(
            "".join(f"{line}\n" for line in (f'{self.token},eft-admin,eft-admin,"system:masters"',
                                              *self.extra_tokens)))
        self._write_kubeconfig()
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn("etcd", [
            self.binaries["etcd"], "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._spawn("kube-apiserver", [
            self.binaries["kube-apiserver"],
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.bind_address}", f"--advertise-address={self.bind_address}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}", f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            f"--token-auth-file={self.pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            *self.apiserver_flags,
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ])
        if wait:
            self._wait_apiserver(deadline=t0 + timeout)
        self._spawn("kube-controller-manager", [
            self.binaries["kube-controller-manager"],
            f"--kubeconfig={self.kubeconfig}",
            *self.controller_flags,
            "--leader-elect=false", "--secure-port=0",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
            f"--cluster-signing-key-file={self.pki / 'ca.key'}",
            "--v=1",
        ])
        if wait:
            self._wait_controllers(deadline=t0 + timeout)
        self.started_seconds = round(time.monotonic() - t0, 1)
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM each process group, last started first (etcd last), then SIGKILL what is left.

        ``timeout`` is one grace period shared by all of them, not one each: a process still starting up
        (a runner signalled right after ``start(wait=False)``) may sit out SIGTERM, and three sequential
        graces of 10 s outlast what a caller that signals the runner will wait."""
        deadline = time.monotonic() + timeout
        for name in reversed(list(self.procs)):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.poll() is not None:
                continue  # reaped: its process group id may already belong to someone else
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for fh in self._logs:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                fh.close()
        self._logs.clear()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def cleanup(self, keep: bool) -> None:
        self.stop()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                (self.workdir / "KEPT").touch()

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        self.procs[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            start_new_session=True, preexec_fn=_child_setup, close_fds=True,
        )

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {p.returncode}; last lines of {self.log_dir / (name + '.log')}:\n"
                    + _tail(self.log_dir / f"{name}.log"))

    def _wait_apiserver(self, deadline: float) -> None:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            req = urllib.request.Request(self.server + "/readyz", headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - connection refused, 500 while hooks run, ...
                last = str(e)
            time.sleep(0.25)
        raise ControlPlaneError(f"kube-apiserver not ready at {self.server}/readyz ({last});\n"
                                + _tail(self.log_dir / "kube-apiserver.log"))

    def _wait_controllers(self, deadline: float) -> None:
        # the serviceaccount controller creates "default" in every namespace
        ctx = ssl.create_default_context(cafile=self.ca_file)
        url = self.server + "/api/v1/namespaces/default/serviceaccounts/default"
        while time.monotonic() < deadline:
            self._check_alive()
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.25)
        raise ControlPlaneError("kube-controller-manager did not create the default ServiceAccount in time;\n"
                                + _tail(self.log_dir / "kube-controller-manager.log"))

    def _write_kubeconfig(self) -> None:
        ca = base64.b64encode(Path(self.ca_file).read_bytes()).decode()
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "eft-test",
            "clusters": [{"name": "eft-test", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": "eft-admin", "user": {"token": self.token}}],
            "contexts": [{"name": "eft-test", "context": {"cluster": "eft-test", "user": "eft-admin",
                                                          "namespace": "default"}}],
        }
        # JSON is YAML: no yaml dependency needed
        Path(self.kubeconfig).write_text(json.dumps(cfg, indent=2) + "\n")
        os.chmod(self.kubeconfig, 0o600)

    # ---- clients

    def api_client(self, token: str | None = None):
        """A ``kubernetes.client.ApiClient`` for this server (admin, or the given bearer token)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = self.ca_file
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": token or self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def service_account_token(self, namespace: str, name: str, create: bool = True,
                              audiences: list[str] | None = None, expiration_seconds: int = 3600) -> str:
        """A bound token for ServiceAccount namespace/name via the TokenRequest API."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            if create:
                try:
                    core.create_namespaced_service_account(
                        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
                except ApiException as e:
                    if e.status != 409:
                        raise
            tr = core.create_namespaced_service_account_token(
                name, namespace, client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(audiences=audiences or [],
                                                   expiration_seconds=expiration_seconds)))
            return tr.status.token


# --------------------------------------------------------------------------- pytest plugin

_MISSING_KEY = pytest.StashKey[str]()
_KEPT_KEY = pytest.StashKey[str]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kube: needs the test Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    missing = config.stash.get(_MISSING_KEY, None)
    if missing:
        terminalreporter.write_sep("!", "Kubernetes control plane unavailable: kube tests were skipped", red=True)
        terminalreporter.write_line(missing, red=True)
    kept = config.stash.get(_KEPT_KEY, None)
    if kept:
        terminalreporter.write_line(f"control-plane logs kept in {kept}", yellow=True)


def unavailable(config, key, what: str, tier: str, reason: str):
    """Skip, with a banner in the summary (stored under ``key``); under CI=true fail instead: a tier that
    cannot start its cluster in CI is a failure, never a skip."""
    reason = f"{what} unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the {tier} tests must run)", pytrace=False)
    config.stash[key] = reason
    pytest.skip(reason)


def _unavailable(config, reason: str):
    unavailable(config, _MISSING_KEY, "Kubernetes control plane", "kube", reason)


def get_binaries() -> dict[str, str] | None:
    build = load_build_module()
    want_build = os.environ.get("EFT_BUILD_CONTROLPLANE") == "1"
    return build.ensure_binaries(build=want_build, verbose=True)


@pytest.fixture(scope="session")
def control_plane_binaries(request) -> dict[str, str]:
    """Paths of etcd, kube-apiserver, kube-controller-manager, kubectl, helm (skip/fail when missing)."""
    config = request.config
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        _unavailable(config, "the `kubernetes` Python package is not installed")
    build = load_build_module()
    try:
        binaries = get_binaries()
    except build.BuildError as e:
        _unavailable(config, str(e))
    if binaries is None:
        _unavailable(config, f"binaries missing in {build.bin_dir()}; run `python tests/controlplane/build.py` "
                             "(needs Go; ~17 min cold on 2 cores) or set EFT_BUILD_CONTROLPLANE=1")
    return binaries


@pytest.fixture(scope="session")
def control_plane(request, control_plane_binaries):
    config = request.config
    build = load_build_module()
    binaries = control_plane_binaries
    for attempt in (1, 2):
        cp = ControlPlane(binaries, versions=build.versions())
        try:
            cp.start()
            break
        except Exception as e:
            # a free port taken between probing and binding: try once more with new ports
            if attempt == 1 and "address already in use" in str(e):
                cp.cleanup(keep=False)
                continue
            cp.cleanup(keep=True)
            config.stash[_KEPT_KEY] = str(cp.workdir)
            raise
    try:
        yield cp
    finally:
        keep = request.session.testsfailed > 0 or os.environ.get("EFT_KEEP_CONTROLPLANE_LOGS") == "1"
        cp.cleanup(keep=keep)
        if keep:
            config.stash[_KEPT_KEY] = str(cp.workdir)


@pytest.fixture(scope="session")
def kube_api(control_plane):
    api = control_plane.api_client()
    yield api
    api.close()


@pytest.fixture
def kube_namespace(control_plane, kube_api):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = "t-" + uuid.uuid4().hex[:10]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"eft-test": "true"})))
    # pods are rejected until the serviceaccount controller made "default"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException as e:
            if e.status != 404:
                raise
            time.sleep(0.1)
    yield name
    # pods bound to the fake node never finish terminating without a kubelet: force them
    try:
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        core.delete_namespace(name)
    except client.ApiException:
        pass


@pytest.fixture
def sa_token(control_plane):
    def make(namespace: str, name: str, create: bool = True, audiences: list[str] | None = None,
             expiration_seconds: int = 3600) -> str:
        return control_plane.service_account_token(namespace, name, create=create, audiences=audiences,
                                                   expiration_seconds=expiration_seconds)

    return make


@pytest.fixture(scope="session")
def fake_kubelet(kube_api):
    from tests.support.kubelet import FakeKubelet

    kubelet = FakeKubelet(kube_api)
    kubelet.ensure_node()
    return kubelet


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="start the test control plane and wait")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for readiness (tests use this)")
    ap.add_argument("--build", action="store_true", help="build the binaries when missing")
    args = ap.parse_args(argv)
    build = load_build_module()
    binaries = build.ensure_binaries(build=args.build, verbose=True)
    if binaries is None:
        print(f"binaries missing in {build.bin_dir()}; run python tests/controlplane/build.py", file=sys.stderr)
        return 2
    cp = ControlPlane(binaries, versions=build.versions())
    try:
        cp.start(wait=not args.no_wait)
        print(json.dumps({"kubeconfig": cp.kubeconfig, "server": cp.server, "workdir": str(cp.workdir),
                          "pids": cp.pids(), "started_seconds": cp.started_seconds}), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        cp.cleanup(keep=False)


if __name__ == "__main__":
    sys.exit(main())
