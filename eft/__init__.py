"""eft: domain fine-tuning of text-embedding models, as a Kubernetes operator and a local runner."""

try:
    from importlib.metadata import version as _version

    __version__ = _version("eft")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
