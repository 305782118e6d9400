"""Benchmark: `eft serve` against Infinity and sentence-transformers `encode`, same model, same texts, same CPUs.

Same model, same texts, same CPUs, one run each. For every concurrency level C:

  * server: the real `eft serve` in a subprocess; C client tasks (aiohttp, else httpx, in this process) each send one
    text per request, base64 like the OpenAI SDK, until the text list is done. Latency is per request.
  * Infinity (infinity-emb, the server users pick instead): its torch engine and its optimum (ONNX Runtime)
    engine on a graph optimum exports, fp32 and its preferred int8 on CPU, from .venv-infinity
    (`make bench-infinity`), on the same tuned model folder, same client, same threads.
  * fastembed: in-process like ST encode, on the export's own ONNX files (fp32, int8) loaded offline as a
    custom model.
  * ST encode: the texts in consecutive groups of C, each group one `model.encode(group, batch_size=C)`
    call — an in-process caller with perfect batching of C concurrent requests. Latency of a text is
    its group's encode time.

Usage:
    python bench/serve.py                          # builds a tiny export of the bundled model first
    python bench/serve.py --model WS/export        # an export folder (e.g. from `eft run`)
    python bench/serve.py --device cuda --corpus DATA/corpus.jsonl   # ST fp16 vs eft serve --backend torch fp16

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


def bench_fastembed(model_dir: Path, variant: str, texts: list[str], levels: list[int], threads: int,
                    check: tuple[list[str], np.ndarray]) -> dict:
    """fastembed (in-process, ONNX Runtime) on the export's own ONNX file, loaded offline as a custom model;
    timed like ST encode: groups of C texts, one `embed(group, batch_size=C)` each."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"eft-bench/{variant}"
    file = {"fp32": "model.onnx", "int8": "model.int8.onnx"}[variant]
    if name not in {d["model"] for d in TextEmbedding.list_supported_models()}:
        # The graph ends in the pooled, normalised embedding: fastembed must neither pool nor normalise again.
        TextEmbedding.add_custom_model(model=name, pooling=PoolingType.DISABLED, normalization=False,
                                       sources=ModelSource(hf=name), dim=int(check[1].shape[1]), model_file=file,
                                       output_name="sentence_embedding")
    m = TextEmbedding(name, specific_model_path=str(model_dir), threads=threads)
    got = np.array(list(m.embed(check[0])), dtype=np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    out: dict = {"cosine": float((got * check[1]).sum(1).min())}
    for conc in levels:
        list(m.embed(texts[:conc], batch_size=conc))  # warm-up
        lat: list[float] = []
        t0 = time.perf_counter()
        for i in range(0, len(texts), conc):
            group = texts[i : i + conc]
            t = time.perf_counter()
            list(m.embed(group, batch_size=conc))
            lat += [time.perf_counter() - t] * len(group)
        wall = time.perf_counter() - t0
        out[conc] = {"tps": len(texts) / wall, "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000}
        print(f"  fastembed {variant} c={conc}: {out[conc]['tps']:.1f} texts/s", file=sys.stderr)
    return out


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


def corpus_texts(path: Path, n: int, seed: int = 0) -> list[str]:
    """Passages of a BEIR corpus.jsonl (title + text), n of them at random."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                docs.append(f"{d.get('title') or ''} {d.get('text') or ''}".strip())
    rng = np.random.default_rng(seed)
    return [docs[i] for i in rng.choice(len(docs), n, replace=len(docs) < n)]


def _agreement(url: str, model: str, texts: list[str], want: np.ndarray) -> float:
    """Lowest cosine between a server's embeddings and ST encode's for the same texts."""
    import httpx

    r = httpx.post(url + "/v1/embeddings", json={"model": model, "input": texts}, timeout=120)
    r.raise_for_status()
    got = np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], dtype=np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    return float((got * want).sum(1).min())


class EftServer:
    """`eft serve` in a subprocess."""

    def __init__(self, model_dir: Path, backend: str, variant: str, threads: int, device: str, extra: list[str]):
        self.name = f"eft serve {backend} {variant}"
        self.args = ["--backend", backend, "--variant", variant, "--threads", str(threads), "--device", device, *extra]
        self.model_dir = model_dir

    def start(self) -> tuple[str, str, str]:
        from eft.serving.smoke import free_port, start_server, wait_ready

        port = free_port()
        self.proc, self.log = start_server(self.model_dir, port, self.args)
        info = wait_ready(port, self.proc, 300)
        return f"http://127.0.0.1:{port}", info["model"], str(info.get("backend"))

    def stop(self) -> None:
        from eft.serving.smoke import stop_server

        if not hasattr(self, "proc"):
            return
        if stop_server(self.proc) != 0:
            print(Path(self.log).read_text()[-2000:], file=sys.stderr)
        Path(self.log).unlink(missing_ok=True)


class InfinityServer:
    """Infinity (`infinity_emb v2`, pip infinity-emb) from its own virtual environment (it pins
    sentence-transformers 3 and numpy 1, which cannot share eft's), serving the same tuned model
    folder, on the same threads, under /v1 like OpenAI."""

    def __init__(self, venv: Path, model_dir: Path, engine: str, threads: int, device: str, label: str = "",
                 pooling_source: Path | None = None):
        self.venv, self.model_dir, self.engine, self.threads, self.device = venv, model_dir, engine, threads, device
        self.pooling_source = pooling_source or model_dir
        self.name = f"Infinity {engine}{label}"

    def start(self) -> tuple[str, str, str]:
        import subprocess

        import httpx

        from eft.serving.smoke import free_port

        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        # The optimum engine hands optimum the ONNX file's path as found by a glob of --model-id, which
        # optimum 2 wants relative to the model folder: run it from inside the folder with --model-id "."
        local = self.engine == "optimum"
        cmd = [str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", "." if local else str(self.model_dir),
               "--served-model-name", "bench", "--engine", self.engine, "--device", self.device,
               "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1", "--log-level", "warning",
               "--no-bettertransformer"]
        if self.engine == "optimum":
            # Its optimum engine does not read 1_Pooling/config.json: "auto" means CLS pooling there (measured:
            # cosine 0.44 to the model's mean-pooled embedding). Tell it the folder's pooling.
            from eft.model_folder import pooling_of

            cmd += ["--pooling-method", pooling_of(self.pooling_source)[0]]
        self.log = Path(tempfile.mkstemp(prefix="infinity-", suffix=".log")[1])
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env,
                                     cwd=str(self.model_dir) if local else None)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Infinity exited ({self.proc.returncode}): {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return f"http://127.0.0.1:{port}", "bench", f"infinity-emb {self.engine} on {self.device}"
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("Infinity not ready after 300 s")

    def stop(self) -> None:
        if not hasattr(self, "proc"):
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
        self.log.unlink(missing_ok=True)


def infinity_onnx_folder(venv: Path, model_dir: Path, work: Path, quantize: bool) -> Path:
    """The tuned model exported for Infinity's optimum engine by optimum itself, as a plain transformers
    encoder (Infinity reads last_hidden_state and pools it; eft's ONNX graphs end in the pooled embedding). int8: optimum's dynamic
    AVX2 quantization, Infinity's preferred file on CPU."""
    import subprocess

    out = work / "infinity-onnx"
    if not (out / "model.onnx").is_file():
        subprocess.run([str(venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(model_dir), "--task",
                        "feature-extraction", "--library-name", "transformers", str(out)], check=True, capture_output=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if not quantize:
        return out
    q = work / "infinity-onnx-int8"
    if not q.is_dir():
        subprocess.run([str(venv / "bin" / "optimum-cli"), "onnxruntime", "quantize", "--onnx_model", str(out),
                        "--avx2", "-o", str(q)], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return q


def bench_contender(c, texts: list[str], levels: list[int], check: tuple[list[str], np.ndarray]) -> dict:
    try:
        url, model, desc = c.start()
        cos = _agreement(url, model, *check)
        print(f"  {c.name}: {desc}; min cosine vs ST encode {cos:.6f}", file=sys.stderr)
        out: dict = {"cosine": cos}
        for conc in levels:
            out[conc] = asyncio.run(_clients(url, model, texts, conc))
            errs = f", {out[conc]['errors']} ERRORS" if out[conc]["errors"] else ""
            print(f"  {c.name} c={conc}: {out[conc]['tps']:.1f} texts/s p99 {out[conc]['p99']:.0f} ms{errs}",
                  file=sys.stderr)
        return out
    finally:
        c.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="export folder (default: export the bundled model into a temp workspace)")
    p.add_argument("--st-model", help="a sentence-transformers folder instead of an export: eft serve's torch "
                   "backend only (the GPU run, where no export is carried)")
    p.add_argument("--workspace", help="take texts from WS/prepare/beir")
    p.add_argument("--corpus", help="take texts from a BEIR corpus.jsonl (passages)")
    p.add_argument("--texts", type=int, default=256, help="texts (= requests) per concurrency level")
    p.add_argument("--concurrency", default=None, help="default: 1,8,32 on cpu; 1,8,64 on cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every contender (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--variants", default=None,
                   help="eft serve contenders as BACKEND:VARIANT (default: onnx:fp32,onnx:int8 on cpu; torch:fp16 on cuda)")
    p.add_argument("--infinity-venv", default=None,
                   help="virtual environment with infinity-emb (make bench-infinity builds .venv-infinity); "
                   "default: .venv-infinity when present")
    p.add_argument("--infinity-engines", default="torch,optimum,optimum-int8")
    p.add_argument("--no-fastembed", action="store_true", help="leave out the fastembed peer")
    p.add_argument("--server-arg", action="append", default=[], help="extra `eft serve` argument (repeatable)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from eft.serving.backends import available_cpus

    threads = a.threads or available_cpus()
    levels = [int(x) for x in (a.concurrency or ("1,8,32" if a.device == "cpu" else "1,8,64")).split(",")]
    variants = [v.split(":") for v in (a.variants or ("onnx:fp32,onnx:int8" if a.device == "cpu"
                                                        else "torch:fp16")).split(",")]

    tmp = tempfile.TemporaryDirectory(prefix="eft-bench-")
    work = Path(tmp.name)
    manifest: dict = {}
    if a.st_model:
        model_dir = src = Path(a.st_model).resolve()
        variants = [(b, v) for b, v in variants if b == "torch"]
    else:
        if a.model:
            model_dir = Path(a.model)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/support
            from tests.support.export_workspace import run_export

            ws = work / "ws"
            kubernetes_beir(ws / "prepare" / "beir")
            print("exporting the bundled model (fp32 + int8, quality on a Kubernetes-API test split) into a temp "
                  "workspace...", file=sys.stderr)
            model_dir = run_export(ws, name="bench")
        manifest = json.loads((model_dir / "model-manifest.json").read_text())
        src = (model_dir / manifest["source"]["path"]).resolve()
    if a.corpus:
        texts = corpus_texts(Path(a.corpus), a.texts)
    else:
        texts = workspace_texts(Path(a.workspace), a.texts) if a.workspace else kubernetes_texts(a.texts)

    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(src), device=a.device)
    st.max_seq_length = int(manifest.get("max_seq_length") or st.max_seq_length)
    if a.device == "cuda":
        st.half()
    tok = st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]
    lengths = [len(x) for x in tok]
    card = torch.cuda.get_device_name(0) if a.device == "cuda" else f"{threads} CPU threads"
    print(f"{len(texts)} texts, tokens: mean {statistics.mean(lengths):.0f}, max {max(lengths)}; {card}; "
          f"{os.cpu_count()} CPUs visible", file=sys.stderr)
    # Short texts for the agreement check: every contender truncates the same way below 256 tokens.
    check_texts = sorted(texts, key=len)[: 16]
    check = (check_texts, st.encode(check_texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32))

    results: dict[str, dict] = {}
    st_name = f"ST encode ({'fp16' if a.device == 'cuda' else 'fp32'}, in-process)"
    results[st_name] = {"cosine": 1.0}
    for c in levels:
        results[st_name][c] = bench_st(st, texts, c, a.device)
        print(f"  ST c={c}: {results[st_name][c]['tps']:.1f} texts/s", file=sys.stderr)
    del st
    if a.device == "cuda":
        torch.cuda.empty_cache()

    if a.device == "cpu" and manifest and not a.no_fastembed:
        for v in ("fp32", "int8"):
            if v in manifest.get("served_variants", []):
                try:
                    results[f"fastembed {v} (eft's ONNX, in-process)"] = bench_fastembed(model_dir, v, texts, levels,
                                                                                         threads, check)
                except ImportError:
                    print("  no fastembed (pip install -e '.[bench]')", file=sys.stderr)
                    break

    contenders = []
    for backend, v in variants:
        if backend == "onnx" and v not in manifest.get("served_variants", []):
            print(f"  skipping onnx {v}: not a served variant of this export", file=sys.stderr)
            continue
        contenders.append(EftServer(model_dir, backend, v, threads, a.device, a.server_arg))
    venv = Path(a.infinity_venv) if a.infinity_venv else ROOT / ".venv-infinity"
    if (venv / "bin" / "infinity_emb").is_file():
        for engine in a.infinity_engines.split(","):
            try:
                if engine == "torch":
                    contenders.append(InfinityServer(venv, src, "torch", threads, a.device))
                else:
                    folder = infinity_onnx_folder(venv, src, work, quantize=engine.endswith("int8"))
                    contenders.append(InfinityServer(venv, folder, "optimum", threads, a.device,
                                                     " int8" if engine.endswith("int8") else " fp32", src))
            except Exception as exc:  # say so in the table rather than drop the contender silently
                print(f"  Infinity {engine}: could not prepare: {exc}", file=sys.stderr)
    else:
        print(f"  no Infinity: {venv} has no infinity_emb (make bench-infinity)", file=sys.stderr)
    for c in contenders:
        try:
            results[c.name] = bench_contender(c, texts, levels, check)
        except Exception as exc:
            print(f"  {c.name} failed: {exc}", file=sys.stderr)

    base = results[st_name]
    rows = [("system", "conc", "texts/s", "p50 ms", "p99 ms", "x ST", "min cos")]
    for name, per in results.items():
        for c in levels:
            r = per[c]
            rows.append((name, str(c), f"{r['tps']:.1f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                         f"{r['tps'] / base[c]['tps']:.2f}", f"{per['cosine']:.5f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n{card}, {len(texts)} texts, one text per request")
    for i, r in enumerate(rows):
        print("  ".join(x.rjust(w) if j else x.ljust(w) for j, (x, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    q = manifest.get("variants") or {}
    fp32_q = q.get("fp32", {}).get("quality", {}).get("ndcg@10")
    for v in ("int8", "fp16"):
        if fp32_q is not None and v in q and "quality" in q[v]:
            mq = manifest.get("quality") or {}
            print(f"{v} quality (export, test split of {mq.get('queries')} queries x {mq.get('passages')} passages): "
                  f"ndcg@10 {q[v]['quality']['ndcg@10']:.4f} vs fp32 {fp32_q:.4f} "
                  f"({-q[v]['relative_loss']:+.2%}, {q[v]['status']})")
    top = max(levels)
    ours = "eft serve onnx int8" if a.device == "cpu" else "eft serve torch fp16"
    if ours in results:
        r = results[ours][top]
        print(f"{ours} at c={top}: {r['tps'] / base[top]['tps']:.2f}x ST encode", end="")
        goal = 5.0 if a.device == "cuda" else None
        if goal:
            print(f" ({'meets' if r['tps'] / base[top]['tps'] >= goal else 'misses'} the {goal:g}x goal)", end="")
        # Only Infinity runs whose embeddings agree with the model's count (a wrong answer fast is no answer).
        inf = [(n, per) for n, per in results.items() if n.startswith("Infinity") and per["cosine"] > 0.98]
        if inf:
            n, per = max(inf, key=lambda x: x[1][top]["tps"])
            ratio = r["tps"] / per[top]["tps"]
            print(f"; {ratio:.2f}x the fastest Infinity ({n}: {per[top]['tps']:.1f} texts/s), p99 {r['p99']:.0f} vs "
                  f"{per[top]['p99']:.0f} ms ({'meets' if ratio >= 1.5 and r['p99'] < per[top]['p99'] else 'misses'} "
                  "the 1.5x / lower-p99 goal)", end="")
        print()
    print("RESULT " + json.dumps({"device": a.device, "card": card, "texts": len(texts), "threads": threads,
                                  "results": {k: {str(c): v for c, v in per.items()} for k, per in results.items()}}))
    if a.json:
        Path(a.json).write_text(json.dumps({"results": {k: {str(c): v for c, v in per.items()}
                                                        for k, per in results.items()},
                                            "threads": threads, "device": a.device, "card": card,
                                            "texts": len(texts)}, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
