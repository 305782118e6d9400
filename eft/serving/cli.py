"""`eft serve --model DIR`: an OpenAI-compatible embedding server (FastAPI + uvicorn).

DIR is an eft export folder (model-manifest.json, ONNX variants, tokenizer) or, with the torch
backend, any sentence-transformers folder. Every file the manifest lists is checked against its
sha256 before the server starts: a modified or truncated model is refused with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from eft.serving.manifest import ModelRefused
from eft.settings import LOG_LEVELS, ServeSettings, SettingsError

if TYPE_CHECKING:  # the server's modules load only once the model passed preflight
    import uvicorn

    from eft.serving.app import ServerConfig
    from eft.serving.backends import Backend

log = logging.getLogger("eft.serving")



def build_parser(settings: ServeSettings | None = None) -> argparse.ArgumentParser:
    """The `eft serve` flags; host, port and log level default to `settings` (from the environment in main)."""
    settings = settings or ServeSettings()
    p = argparse.ArgumentParser(prog="eft serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export folder (with model-manifest.json) or, for --backend torch, "
                   "a sentence-transformers folder")
    p.add_argument("--host", default=settings.host)
    p.add_argument("--port", type=int, default=settings.port)
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="auto: onnx for an export folder, torch for a sentence-transformers folder")
    p.add_argument("--variant", choices=("auto", "fp32", "int8", "fp16"), default="auto",
                   help="ONNX variant; auto: int8 on CPU (if exported and accepted), fp16 on GPU, else fp32")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
                   help="auto: cuda when available; tensorrt: ONNX Runtime's TensorRT execution provider")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the CPUs available)")
    p.add_argument("--served-model-name", default=None, help="name at /v1/models (default: the manifest's)")
    p.add_argument("--query-prefix", default=None, help="prefix for input_type=query (default: the model's)")
    p.add_argument("--passage-prefix", default=None, help="prefix for input_type=passage (default: the model's)")
    p.add_argument("--max-inputs", type=int, default=2048, help="texts per request")
    p.add_argument("--max-input-tokens", type=int, default=None,
                   help="tokens per text (default and maximum: the model's max sequence length)")
    p.add_argument("--on-too-long", choices=("truncate", "error"), default="truncate",
                   help="a text over --max-input-tokens is truncated (default) or answered with 400")
    p.add_argument("--token-ids", choices=("cl100k_base", "o200k_base", "model", "reject"), default="cl100k_base",
                   help="how token-id inputs are read: decoded from tiktoken cl100k_base (what OpenAI clients such "
                   "as LangChain send; default) or o200k_base, from the served model's own tokenizer, or refused")
    p.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024, help="request body limit (413 above)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    p.add_argument("--max-batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a forward pass waits for more texts")
    p.add_argument("--max-padding", type=float, default=0.25,
                   help="start a new forward pass rather than pad more than this fraction of the real tokens")
    p.add_argument("--max-queue", type=int, default=8192, help="queued texts before 503 overloaded")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish in-flight requests")
    p.add_argument("--allow-rejected-variant", action="store_true",
                   help="serve an ONNX variant the export rejected for quality loss")
    p.add_argument("--spin", action="store_true", help="let ONNX Runtime threads spin (dedicated CPUs only)")
    p.add_argument("--log-level", default=settings.log_level, choices=LOG_LEVELS)
    return p


def preflight(args: argparse.Namespace) -> str:
    """Everything that can refuse the model before the server binds its port. Returns the backend kind."""
    from eft.serving.backends import choose_variant
    from eft.serving.manifest import is_export_dir, load_manifest, source_model_dir, verify_files

    d = Path(args.model)
    if not d.is_dir():
        raise ModelRefused(f"model folder {d} does not exist")
    export = is_export_dir(d)
    backend = args.backend if args.backend != "auto" else ("onnx" if export else "torch")
    if backend == "onnx" and not export:
        raise ModelRefused(f"{d} has no model-manifest.json: the onnx backend serves an eft export folder "
                           "(run the export stage), or use --backend torch for a sentence-transformers folder")
    if export:
        m = load_manifest(d)
        n = verify_files(d, m["files"])
        log.info("verified %d model files (%.1f MB) against %s", len(m["files"]), n / 1e6, "model-manifest.json")
        if backend == "onnx" and args.device in ("cpu", "auto"):
            dev = "cpu"
            if args.device == "auto":
                import onnxruntime as ort

                from eft.serving.backends import gpu_present

                dev = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present() else "cpu"
            choose_variant(m, args.variant, dev, allow_rejected=args.allow_rejected_variant)
        if backend == "torch":
            src = source_model_dir(d, m)
            if src is None or not src.is_dir():
                raise ModelRefused(f"{d}: the torch backend needs the export's source sentence-transformers model "
                                   f"({(m.get('source') or {}).get('path')}), which is missing; use --backend onnx "
                                   "or pass a sentence-transformers folder")
            verify_files(src, (m.get("source") or {}).get("files") or {}, what="source model file")
    return backend


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ServeSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    _configure_process(args.log_level)
    try:
        backend_kind = preflight(args)
    except ModelRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fatal = _serve(args, backend_kind, settings.trt_cache)
    if fatal:
        print(f"error: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def _configure_process(log_level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    logging.getLogger("eft").setLevel(log_level.upper())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The torch backend: OpenMP threads that spin-wait starve the event loop and the tokenizer on shared cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _server_config(args: argparse.Namespace) -> ServerConfig:
    from eft.serving.app import ServerConfig

    return ServerConfig(
        model_name=args.served_model_name, max_inputs=args.max_inputs, max_input_tokens=args.max_input_tokens,
        on_too_long=args.on_too_long, max_request_bytes=args.max_request_bytes,
        max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_padding=args.max_padding, query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix, token_ids=args.token_ids)


def _backend_loader(args: argparse.Namespace, backend_kind: str,
                    trt_cache: str | None) -> Callable[[], Backend]:
    """Loads the backend in the app's background thread (preflight has verified the files already)."""
    from eft.serving.backends import load_backend

    def loader() -> Backend:
        return load_backend(Path(args.model), backend=backend_kind, variant=args.variant, device=args.device,
                            threads=args.threads, model_name=args.served_model_name, verify=False,
                            allow_rejected=args.allow_rejected_variant, spinning=args.spin, trt_cache=trt_cache)

    return loader


def _serve(args: argparse.Namespace, backend_kind: str, trt_cache: str | None) -> list[str]:
    """Run the server until it stops; returns the fatal errors (a model that failed to load) that stopped it."""
    import uvicorn

    from eft.serving.app import create_app

    fatal: list[str] = []
    holder: dict[str, uvicorn.Server] = {}

    def on_fatal(msg: str) -> None:
        fatal.append(msg)
        if "server" in holder:
            holder["server"].should_exit = True

    app = create_app(_server_config(args), _backend_loader(args, backend_kind, trt_cache), on_fatal=on_fatal)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=args.graceful_timeout, lifespan="on")
    server = holder["server"] = _draining_server(config, app)
    try:
        server.run()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    return fatal


def _draining_server(config: uvicorn.Config, app: Any) -> uvicorn.Server:
    """A uvicorn server whose readiness goes false the moment shutdown starts, and that exits 0 on SIGTERM."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            st = app.state.eft
            if st.status == "ready":
                st.status = "draining"
                app.state.metrics.ready.set(0)
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured signal after its graceful shutdown (exit status -15); a
            # drained shutdown on SIGTERM is a clean exit (status 0) for us.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return Server(config)


if __name__ == "__main__":
    raise SystemExit(main())
