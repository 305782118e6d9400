"""Reading documents for ingest: files from a folder or URL (through fsspec), or the built-in sample corpus.

Every reader yields plain-text documents; markup is stripped here so chunking sees prose only.
"""

from __future__ import annotations

import fnmatch
import html
import json
import re
from dataclasses import dataclass, field
from typing import Iterator

from eft.spec import CorpusSpec

BUILTIN_KUBERNETES = "builtin:kubernetes-api"


@dataclass
class Document:
    source: str  # path relative to the corpus root (or a synthetic name)
    title: str
    text: str


@dataclass
class ReadReport:
    files_seen: int = 0
    documents: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"source", "reason"}

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append({"source": source, "reason": reason})


# --- markup stripping -----------------------------------------------------------------------------

_MD_FENCE = re.compile(r"^\s*(```|~~~).*$", re.M)
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPH = re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1")
_MD_LIST = re.compile(r"^\s*([-*+]|\d+[.)])\s+", re.M)
_MD_QUOTE = re.compile(r"^\s*>\s?", re.M)
_MD_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.M)
_HTML_TAG = re.compile(r"<[^>]+>")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w-]+::.*$", re.M)
_RST_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+<>])\1{2,}\s*$", re.M)
_RST_ROLE = re.compile(r":[\w-]+:`([^`<]*)(?:<[^>]*>)?`")


def first_heading(text: str) -> str:
    m = re.search(r"^\s{0,3}#\s+(.+)$", text, re.M)
    return m.group(1).strip() if m else ""


def strip_markdown(text: str) -> str:
    text = _MD_FENCE.sub("", text)
    text = _MD_HEADING.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    for _ in range(2):  # nested emphasis
        text = _MD_EMPH.sub(r"\2", text)
    text = _MD_LIST.sub("", text)
    text = _MD_QUOTE.sub("", text)
    text = _MD_TABLE_RULE.sub("", text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text)


def strip_rst(text: str) -> str:
    text = _RST_DIRECTIVE.sub("", text)
    text = _RST_UNDERLINE.sub("", text)
    text = _RST_ROLE.sub(r"\1", text)
    return text.replace("``", "")


def html_to_text(raw: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "nav", "footer"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    # Block elements end paragraphs, so chunking can cut between them.
    for tag in soup.find_all(["p", "div", "section", "article", "li", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6",
                              "pre", "blockquote", "table", "ul", "ol"]):
        tag.insert_before("\n\n")
    return title, soup.get_text()


def _json_texts(obj) -> list[tuple[str, str]]:
    """(title, text) pairs from a JSON value: objects with text-like fields, else all string leaves."""
    if isinstance(obj, list):
        out: list[tuple[str, str]] = []
        for item in obj:
            out.extend(_json_texts(item))
        return out
    if isinstance(obj, dict):
        for key in ("text", "content", "body", "passage"):
            if isinstance(obj.get(key), str):
                title = obj.get("title") or obj.get("name") or ""
                return [(str(title) if isinstance(title, str) else "", obj[key])]
        leaves = [v for v in _string_leaves(obj) if len(v.split()) >= 3]
        return [("", "\n\n".join(leaves))] if leaves else []
    if isinstance(obj, str):
        return [("", obj)]
    return []


def _string_leaves(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _string_leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _string_leaves(v)


def parse_file(source: str, data: bytes) -> list[Document]:
    """Decode and de-markup one file; raises ValueError with a reason for unusable content."""
    if not data.strip():
        raise ValueError("empty file")
    if b"\x00" in data[:8192]:
        raise ValueError("binary file (NUL bytes)")
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    ext = source.rsplit(".", 1)[-1].lower() if "." in source else ""
    if ext in ("md", "markdown"):
        return [Document(source, first_heading(raw) or stem, strip_markdown(raw))]
    if ext == "rst":
        lines = [ln for ln in raw.splitlines() if ln.strip()]
        title = lines[0].strip() if len(lines) > 1 and _RST_UNDERLINE.match(lines[1]) else stem
        return [Document(source, title, strip_rst(raw))]
    if ext in ("html", "htm"):
        title, text = html_to_text(raw)
        return [Document(source, title or stem, text)]
    if ext == "jsonl":
        docs = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {i} is not JSON: {exc.msg}") from None
            for j, (title, text) in enumerate(_json_texts(row)):
                rid = row.get("_id") if isinstance(row, dict) else None
                docs.append(Document(f"{source}#{rid if rid is not None else i}", title, text))
        return docs
    if ext == "json":
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg} (line {exc.lineno})") from None
        pairs = _json_texts(obj)
        return [Document(source if len(pairs) == 1 else f"{source}#{i}", t or stem, x) for i, (t, x) in enumerate(pairs)]
    return [Document(source, stem, raw)]


# --- sources ----------------------------------------------------------------------------------------

def _matches(rel: str, patterns: list[str]) -> bool:
    for pat in patterns:
        if fnmatch.fnmatch(rel, pat):
            return True
        # "**/*.md" should also match "a.md" at the root.
        if pat.startswith("**/") and fnmatch.fnmatch(rel, pat[3:]):
            return True
    return False


def list_files(spec: CorpusSpec) -> tuple[object, list[tuple[str, str]]]:
    """(filesystem, [(full path, relative path)]) of the files the spec selects, sorted."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec.path)
    if not fs.exists(root):
        raise FileNotFoundError(f"corpus path {spec.path} does not exist")
    if fs.isfile(root):
        return fs, [(root, root.rsplit("/", 1)[-1])]
    root = root.rstrip("/")
    out = []
    for full in sorted(fs.find(root)):
        rel = full[len(root) + 1 :] if full.startswith(root + "/") else full
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders (.git, .DS_Store)
        if _matches(rel, spec.include) and not _matches(rel, spec.exclude):
            out.append((full, rel))
    return fs, out


def read_documents(spec: CorpusSpec, report: ReadReport) -> Iterator[Document]:
    if spec.path.startswith("builtin:"):
        from eft.stages.builtin_corpus import BUILTINS

        if spec.path not in BUILTINS:
            raise FileNotFoundError(f"unknown built-in corpus {spec.path}; choose from {', '.join(BUILTINS)}")
        for doc in BUILTINS[spec.path]():
            report.files_seen += 1
            report.documents += 1
            yield doc
        return
    fs, files = list_files(spec)
    for full, rel in files:
        report.files_seen += 1
        try:
            with fs.open(full, "rb") as f:
                data = f.read()
        except OSError as exc:
            report.skip(rel, f"unreadable: {exc.strerror or exc}")
            continue
        try:
            docs = parse_file(rel, data)
        except ValueError as exc:
            report.skip(rel, str(exc))
            continue
        usable = [d for d in docs if d.text.strip()]
        if not usable:
            report.skip(rel, "no text after removing markup")
            continue
        report.documents += len(usable)
        yield from usable


def corpus_fingerprint(spec: CorpusSpec) -> str:
    """Cheap identity of the selected inputs: names, sizes and modification times (or the package version)."""
    if spec.path.startswith("builtin:"):
        from importlib.metadata import version

        return f"{spec.path}@kubernetes-{version('kubernetes')}"
    try:
        fs, files = list_files(spec)
    except FileNotFoundError:
        return "missing"
    return files_fingerprint(fs, files)


def files_fingerprint(fs, files: list[tuple[str, str]]) -> str:
    """Names, sizes and modification times of (full path, shown name) files: a re-run notices an edited file
    without reading it."""
    import hashlib

    h = hashlib.sha256()
    for full, name in files:
        info = fs.info(full)
        h.update(f"{name}\0{info.get('size')}\0{info.get('mtime') or info.get('LastModified') or info.get('ETag')}\n"
                 .encode())
    return h.hexdigest()[:16]
