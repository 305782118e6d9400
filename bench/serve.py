"""Benchmark: the embedding server (ONNX fp32 and int8) against sentence-transformers `encode` in process.

Same model, same texts, same CPUs, one run each. For every concurrency level C:

  * server: the real `eft serve` in a subprocess; C client tasks (aiohttp, else httpx, in this process) each send one
    text per request, base64 like the OpenAI SDK, until the text list is done. Latency is per request.
  * ST encode: the texts in consecutive groups of C, each group one `model.encode(group, batch_size=C)`
    call — an in-process caller with perfect batching of C concurrent requests. Latency of a text is
    its group's encode time.

Usage:
    python bench/serve.py                          # builds a tiny export of the bundled model first
    python bench/serve.py --model WS/export        # an export folder (e.g. from `eft run`)
    python bench/serve.py --device cuda            # ST fp16 on GPU vs the server's CUDA EP (fp16 variant)

ST runs with OMP_WAIT_POLICY=PASSIVE (set here before torch loads; see below), the server with
ONNX Runtime thread spinning off: both at their best on shared cores.

Texts: `--workspace WS` uses WS/prepare/beir (test queries and passages); by default, field
descriptions from the Kubernetes API (the `kubernetes` package), a mix of short and long texts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# PyTorch's OpenMP threads spin-wait by default; on shared or oversubscribed cores that turns a 15 ms
# encode into ~500 ms (measured on the 2-core dev machine). The ONNX server runs with spinning off too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def kubernetes_texts(n: int, seed: int = 0) -> list[str]:
    import inspect

    import kubernetes.client.models as km

    texts = []
    for name in sorted(dir(km)):
        cls = getattr(km, name)
        fields = getattr(cls, "model_fields", None) if inspect.isclass(cls) else None
        if not fields:
            continue
        kind = name.removeprefix("V1").removeprefix("V2")
        for field, info in fields.items():
            desc = getattr(info, "description", None)
            if desc and len(desc) > 20:
                texts.append(f"{kind}.{field}: {desc}")
    if not texts:  # an older client without pydantic models
        texts = [f"{k} field number {i} of the Kubernetes API" for i in range(n) for k in ("Pod", "Service")]
    rng = np.random.default_rng(seed)
    # half short (query-like: a field name and a few words), half full descriptions
    picks = [texts[i] for i in rng.choice(len(texts), n, replace=len(texts) < n)]
    out = []
    for i, t in enumerate(picks):
        out.append(" ".join(t.split()[: int(rng.integers(4, 12))]) if i % 2 else t)
    return out


def _camel_words(name: str) -> str:
    import re

    return " ".join(w.lower() for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name))


def kubernetes_beir(folder: Path, passages: int = 2000, queries: int = 200, seed: int = 0) -> Path:
    """A BEIR test split from Kubernetes API field docs: passage "Kind.field: description", query
    "<field words> of <kind words>" (many kinds share fields, so neighbours are close: a fair place to see
    a quantized variant's loss). Used for the export the benchmark builds when --model is not given."""
    import inspect

    import kubernetes.client.models as km

    rows = []
    for name in sorted(dir(km)):
        cls = getattr(km, name)
        fields = getattr(cls, "model_fields", None) if inspect.isclass(cls) else None
        for field, info in (fields or {}).items():
            desc = getattr(info, "description", None)
            if desc and len(desc) > 40:
                kind = name.removeprefix("V1").removeprefix("V2")
                rows.append((f"{kind}.{field}", kind, field, desc))
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), min(passages, len(rows)), replace=False))]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for did, kind, field, desc in rows:
            f.write(json.dumps({"_id": did, "title": f"{kind}.{field}", "text": desc}) + "\n")
    picks = rng.choice(len(rows), min(queries, len(rows)), replace=False)
    with open(folder / "queries.jsonl", "w") as f, open(folder / "qrels" / "test.tsv", "w") as q:
        q.write("query-id\tcorpus-id\tscore\n")
        for i in picks:
            did, kind, field, _ = rows[i]
            f.write(json.dumps({"_id": f"q-{did}", "text": f"{_camel_words(field)} of {_camel_words(kind)}"}) + "\n")
            q.write(f"q-{did}\t{did}\t1\n")
    return folder


def workspace_texts(ws: Path, n: int, seed: int = 0) -> list[str]:
    beir = ws / "prepare" / "beir"
    qs = [json.loads(x)["text"] for x in (beir / "queries.jsonl").read_text().splitlines() if x.strip()]
    ds = []
    for x in (beir / "corpus.jsonl").read_text().splitlines():
        if x.strip():
            d = json.loads(x)
            ds.append(f"{d.get('title') or ''} {d.get('text') or ''}".strip())
    rng = np.random.default_rng(seed)
    pool = [qs[i] for i in rng.choice(len(qs), n // 2)] + [ds[i] for i in rng.choice(len(ds), n - n // 2)]
    rng.shuffle(pool)
    return pool


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def bench_st(st, texts: list[str], conc: int, device: str) -> dict:
    lat: list[float] = []
    st.encode(texts[:conc], batch_size=conc, show_progress_bar=False)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(texts), conc):
        group = texts[i : i + conc]
        t = time.perf_counter()
        st.encode(group, batch_size=conc, normalize_embeddings=True, show_progress_bar=False)
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        lat += [time.perf_counter() - t] * len(group)
    wall = time.perf_counter() - t0
    return {"tps": len(texts) / wall, "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000}


class _Http:
    """A keep-alive HTTP client pool: aiohttp when installed (several times cheaper per request than
    httpx, which matters when client and server share two cores), else httpx."""

    def __init__(self, url: str, conc: int):
        self.url, self.conc = url, conc

    async def __aenter__(self):
        try:
            import aiohttp

            self.kind = "aiohttp"
            self.s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.conc),
                                           timeout=aiohttp.ClientTimeout(total=300))
        except ImportError:
            import httpx

            self.kind = "httpx"
            self.s = httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=self.conc))
        return self

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        if self.kind == "aiohttp":
            async with self.s.post(self.url + path, json=body) as r:
                return r.status, await r.json()
        r = await self.s.post(self.url + path, json=body)
        return r.status_code, r.json()

    async def __aexit__(self, *exc):
        await (self.s.close() if self.kind == "aiohttp" else self.s.aclose())


async def _clients(url: str, model: str, texts: list[str], conc: int) -> dict:
    lat: list[float] = []
    errors = 0
    it = iter(range(len(texts)))
    async with _Http(url, conc) as c:
        async def worker():
            nonlocal errors
            for i in it:
                t = time.perf_counter()
                status, body = await c.post("/v1/embeddings",
                                            {"model": model, "input": texts[i], "encoding_format": "base64"})
                lat.append(time.perf_counter() - t)
                if status != 200:
                    errors += 1
                else:
                    base64.b64decode(body["data"][0]["embedding"])

        warm = iter(range(min(len(texts), 2 * conc)))  # warm-up at this concurrency

        async def warm_worker():
            for i in warm:
                await c.post("/v1/embeddings", {"model": model, "input": texts[i]})

        await asyncio.gather(*(warm_worker() for _ in range(conc)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall = time.perf_counter() - t0
    return {"tps": len(texts) / wall, "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000, "errors": errors,
            "client": c.kind}


def bench_server(model_dir: Path, variant: str, texts: list[str], levels: list[int], threads: int, device: str,
                 extra: list[str]) -> dict[int, dict]:
    from eft.serving.smoke import free_port, start_server, stop_server, wait_ready

    port = free_port()
    args = ["--variant", variant, "--threads", str(threads), "--device", device, *extra]
    proc, log = start_server(model_dir, port, args)
    try:
        info = wait_ready(port, proc, 300)
        print(f"  server: {info.get('backend')}", file=sys.stderr)
        out = {}
        for c in levels:
            out[c] = asyncio.run(_clients(f"http://127.0.0.1:{port}", info["model"], texts, c))
            errs = f", {out[c]['errors']} ERRORS" if out[c]["errors"] else ""
            print(f"  {variant} c={c}: {out[c]['tps']:.1f} texts/s ({out[c]['client']} client{errs})", file=sys.stderr)
        return out
    finally:
        rc = stop_server(proc)
        if rc != 0:
            print(Path(log).read_text()[-2000:], file=sys.stderr)
        Path(log).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="export folder (default: export the bundled model into a temp workspace)")
    p.add_argument("--workspace", help="take texts from WS/prepare/beir")
    p.add_argument("--texts", type=int, default=256, help="texts (= requests) per concurrency level")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all available)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--variants", default=None, help="server variants (default: fp32,int8 on cpu; fp32,fp16 on cuda)")
    p.add_argument("--server-arg", action="append", default=[], help="extra `eft serve` argument (repeatable)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from eft.serving.backends import available_cpus

    threads = a.threads or available_cpus()
    levels = [int(x) for x in a.concurrency.split(",")]
    variants = (a.variants or ("fp32,int8" if a.device == "cpu" else "fp32,fp16")).split(",")

    tmp = None
    if a.model:
        model_dir = Path(a.model)
    else:
        from eft.serving.testing import run_export

        tmp = tempfile.TemporaryDirectory(prefix="eft-bench-")
        ws = Path(tmp.name) / "ws"
        kubernetes_beir(ws / "prepare" / "beir")
        print("exporting the bundled model (fp32 + int8, quality on a Kubernetes-API test split) into a temp "
              "workspace...", file=sys.stderr)
        model_dir = run_export(ws, name="bench", fp16=(a.device == "cuda"))
    manifest = json.loads((model_dir / "model-manifest.json").read_text())
    texts = workspace_texts(Path(a.workspace), a.texts) if a.workspace else kubernetes_texts(a.texts)

    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    src = (model_dir / manifest["source"]["path"]).resolve()
    st = SentenceTransformer(str(src), device=a.device)
    st.max_seq_length = int(manifest["max_seq_length"])
    if a.device == "cuda":
        st.half()
    tok = st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]
    lengths = [len(x) for x in tok]
    print(f"{len(texts)} texts, tokens: mean {statistics.mean(lengths):.0f}, max {max(lengths)}; "
          f"{threads} threads; device {a.device}; {os.cpu_count()} CPUs visible", file=sys.stderr)

    results: dict[str, dict[int, dict]] = {}
    st_name = f"ST encode ({'fp16' if a.device == 'cuda' else 'fp32'})"
    results[st_name] = {}
    for c in levels:
        results[st_name][c] = bench_st(st, texts, c, a.device)
        print(f"  ST c={c}: {results[st_name][c]['tps']:.1f} texts/s", file=sys.stderr)
    del st
    for v in variants:
        if v not in manifest.get("served_variants", []):
            print(f"  skipping {v}: not a served variant of this export", file=sys.stderr)
            continue
        results[f"server onnx {v}"] = bench_server(model_dir, v, texts, levels, threads,
                                                   "cuda" if a.device == "cuda" else "cpu", a.server_arg)

    base = results[st_name]
    rows = [("system", "conc", "texts/s", "p50 ms", "p99 ms", "x ST")]
    for name, per in results.items():
        for c in levels:
            r = per[c]
            rows.append((name, str(c), f"{r['tps']:.1f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                         f"{r['tps'] / base[c]['tps']:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, r in enumerate(rows):
        print("  ".join(x.rjust(w) if j else x.ljust(w) for j, (x, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    q = manifest["variants"]
    fp32_q = q["fp32"]["quality"]["ndcg@10"]
    for v in variants:
        if v != "fp32" and v in q and "quality" in q[v]:
            mq = manifest.get("quality") or {}
            print(f"{v} quality (export, test split of {mq.get('queries')} queries x {mq.get('passages')} passages): "
                  f"ndcg@10 {q[v]['quality']['ndcg@10']:.4f} vs fp32 {fp32_q:.4f} "
                  f"({-q[v]['relative_loss']:+.2%}, {q[v]['status']})")
    top = max(levels)
    key = "server onnx int8" if a.device == "cpu" else "server onnx fp16"
    if key in results:
        ratio = results[key][top]["tps"] / base[top]["tps"]
        verdict = "meets" if ratio >= 2 else "misses"
        print(f"{key} at concurrency {top}: {ratio:.2f}x ST encode throughput ({verdict} the 2x target)")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": {k: {str(c): v for c, v in per.items()}
                                                        for k, per in results.items()},
                                            "threads": threads, "device": a.device, "texts": len(texts)}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
