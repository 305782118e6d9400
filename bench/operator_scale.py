"""Operator benchmark: N EmbeddingFinetunes created at once on the test control plane.

Measures
* the time until every resource has its first (ingest) Job, and each resource's latency from its
  creation to its Job;
* API requests per resource made by the operator: the operator talks to the API server through a counting
  HTTP proxy (every request, kopf's list/watch included, by verb and resource), cross-checked with the
  API server's own apiserver_request_total;
* the operator's memory (RSS) idle, after the burst, and its peak (VmHWM).

The operator runs as in the tests: ``eft operator --namespace bench`` as a ServiceAccount bound to exactly
eft/controller/rbac.py. Needs the control-plane binaries (``python tests/controlplane/build.py``).

    .venv/bin/python bench/operator_scale.py [--count 100] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import ssl
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.operator.harness import Cluster, OperatorProcess, install_crd, operator_kubeconfig, raw  # noqa: E402
from tests.support.controlplane import ControlPlane, load_build_module  # noqa: E402

NAMESPACE = "bench"
_RESOURCE = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([^/?]+)(?:/[^/?]+)?(?:/([^/?]+))?")


class CountingProxy:
    """Plain-HTTP reverse proxy in front of the API server that counts every request it forwards."""

    def __init__(self, upstream: str, ca_file: str):
        self.upstream = upstream
        self.ca_file = ca_file
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.port: int | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)

    def start(self) -> "CountingProxy":
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        sslctx = ssl.create_default_context(cafile=self.ca_file)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                        connector=aiohttp.TCPConnector(ssl=sslctx, limit=0))

        async def handle(request: web.Request) -> web.StreamResponse:
            watch = request.query.get("watch") in ("true", "1")
            m = _RESOURCE.match(request.path)
            res = (m.group(1) + (f"/{m.group(2)}" if m and m.group(2) else "")) if m else request.path
            verb = "WATCH" if watch else request.method
            with self.lock:
                self.counts[f"{verb} {res}"] += 1
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
            body = await request.read()
            async with session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                       data=body or None) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")})
                await resp.prepare(request)
                try:
                    async for chunk in up.content.iter_any():
                        await resp.write(chunk)
                    await resp.write_eof()
                except (ConnectionResetError, aiohttp.ClientError):
                    pass
                return resp

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def apiserver_requests(cp: ControlPlane) -> int:
    import urllib.request

    ctx = ssl.create_default_context(cafile=cp.ca_file)
    req = urllib.request.Request(cp.server + "/metrics", headers={"Authorization": f"Bearer {cp.token}"})
    total = 0.0
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("apiserver_request_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)

    build = load_build_module()
    binaries = build.ensure_binaries()
    if binaries is None:
        print("control-plane binaries missing: run python tests/controlplane/build.py", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="eft-bench-"))
    cp = ControlPlane(binaries, versions=build.versions()).start()
    op = None
    try:
        install_crd(cp)
        from kubernetes import client

        admin = cp.api_client()
        core = client.CoreV1Api(admin)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", NAMESPACE)
                break
            except client.ApiException:
                time.sleep(0.2)
        kubeconfig = operator_kubeconfig(cp, NAMESPACE, work / "operator.kubeconfig")
        proxy = CountingProxy(cp.server, cp.ca_file).start()
        cfg = json.loads(kubeconfig.read_text())
        cfg["clusters"][0]["cluster"] = {"server": f"http://127.0.0.1:{proxy.port}"}
        kubeconfig.write_text(json.dumps(cfg))

        op = OperatorProcess(kubeconfig, NAMESPACE, work / "operator.log", EFT_RESYNC_SECONDS="60").start()
        # ready = all watch streams open (the EmbeddingFinetune one and the six kinds of children)
        deadline = time.monotonic() + 60
        while sum(v for k, v in proxy.snapshot().items() if k.startswith("WATCH")) < 7:
            if time.monotonic() > deadline or not op.alive():
                raise RuntimeError("operator did not start:\n" + op.log()[-3000:])
            time.sleep(0.2)
        time.sleep(2)
        idle = rss_kib(op.proc.pid)
        c0, m0 = proxy.snapshot(), apiserver_requests(cp)

        cluster = Cluster(cp, NAMESPACE)
        names = [f"bench-{i:03d}" for i in range(args.count)]
        created: dict[str, float] = {}

        def create(name: str) -> None:
            cluster.create(name, {"training": {"maxSteps": 10}})
            created[name] = time.monotonic()

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        t_created = time.monotonic() - t0
        first_job: dict[str, float] = {}
        batch = client.BatchV1Api(admin)
        while len(first_job) < len(names) and time.monotonic() - t0 < args.timeout:
            jobs = raw(batch.list_namespaced_job(NAMESPACE, label_selector="eft.ai/stage=ingest",
                                                 _preload_content=False))["items"]
            now = time.monotonic()
            for j in jobs:
                inst = j["metadata"]["labels"]["app.kubernetes.io/instance"]
                first_job.setdefault(inst, now)
            time.sleep(0.1)
        t_all = time.monotonic() - t0
        if len(first_job) < len(names):
            raise RuntimeError(f"only {len(first_job)}/{len(names)} got a Job in {args.timeout}s")

        # let the status writes settle: every resource reports its ingest stage Running
        def settled() -> bool:
            items = raw(client.CustomObjectsApi(admin).list_namespaced_custom_object(
                "eft.ai", "v1alpha1", NAMESPACE, "embeddingfinetunes", _preload_content=False))["items"]
            return all(((i.get("status") or {}).get("stages") or [{}])[0].get("phase") == "Running" for i in items)

        while not settled() and time.monotonic() - t0 < args.timeout:
            time.sleep(0.5)
        t_settled = time.monotonic() - t0
        time.sleep(3)
        c1, m1 = proxy.snapshot(), apiserver_requests(cp)
        mem = rss_kib(op.proc.pid)

        delta = c1 - c0
        n = len(names)
        per_object = {k: round(v / n, 2) for k, v in sorted(delta.items()) if not k.startswith("WATCH")}
        latencies = [first_job[x] - created[x] for x in names]
        results = {
            "objects": n,
            "create_burst_seconds": round(t_created, 2),
            "seconds_until_every_object_has_its_first_job": round(t_all, 2),
            "first_job_latency_seconds": {"p50": round(pct(latencies, 0.5), 2), "p95": round(pct(latencies, 0.95), 2),
                                          "max": round(max(latencies), 2),
                                          "mean": round(statistics.mean(latencies), 2)},
            "seconds_until_statuses_settled": round(t_settled, 2),
            "operator_api_requests_per_object": round(sum(v for k, v in delta.items()
                                                          if not k.startswith("WATCH")) / n, 2),
            "operator_requests_per_object_by_kind": per_object,
            "operator_watch_requests_during_burst": sum(v for k, v in delta.items() if k.startswith("WATCH")),
            "apiserver_requests_all_clients_per_object": round((m1 - m0) / n, 1),
            "operator_rss_mib": {"idle": round(idle["VmRSS"] / 1024, 1), "after": round(mem["VmRSS"] / 1024, 1),
                                 "peak": round(mem["VmHWM"] / 1024, 1)},
            "operator_startup_requests": {k: v for k, v in sorted(c0.items())},
        }
        print(json.dumps(results, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        errors = [line for line in op.log().splitlines() if "WARNING" in line or "ERROR" in line]
        if errors:
            print(f"operator warnings/errors ({len(errors)}):", *errors[:10], sep="\n  ", file=sys.stderr)
        return 0
    finally:
        if op is not None:
            op.stop()
        cp.cleanup(keep=False)


if __name__ == "__main__":
    raise SystemExit(main())
