"""What the real cluster looked like when an e2e test failed.

Why: a CI run once failed with nothing but "helm --wait: context deadline exceeded" and a Kueue Job that never
completed; pods had not run, and nothing in the output said why (unschedulable, stuck creating its sandbox,
an image missing from the node, a full disk, ...). The e2e plugin (tests/support/cluster.py) attaches this
report to the first failures of a session and repeats the first one at the end of the run, where CI's tail
shows it. Pure functions turn kubectl's JSON into lines (unit-tested); `diagnose` gathers it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

HEALTHY_PHASES = {"Running", "Succeeded"}
# Log lines worth reading when pods do not start: klog's error and warning lines (E1207 ..., W1207 ...) and
# containerd's level=error/warning; the rest of those logs is routine chatter.
PROBLEM_LINE = re.compile(r"^[EW]\d{4} |level=(error|warning)")


def pod_problems(pods: dict) -> list[str]:
    """One line per pod that is neither Running nor Succeeded, or that runs with a container not ready, with
    the reasons its conditions and containers give."""
    lines = []
    for pod in pods.get("items") or []:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        phase = status.get("phase", "?")
        reasons = []
        for c in status.get("conditions") or []:
            if c.get("status") != "True" and (c.get("reason") or c.get("message")):
                reasons.append(f"{c.get('type')}: {c.get('reason', '')} {c.get('message', '')}".strip())
        not_ready = False
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            state = cs.get("state") or {}
            for kind in ("waiting", "terminated"):
                detail = state.get(kind)
                if detail and not (kind == "terminated" and detail.get("exitCode") == 0):
                    reasons.append(f"{cs.get('name')} {kind}: {detail.get('reason', '')} "
                                   f"{(detail.get('message') or '')[:300]}".strip())
            not_ready = not_ready or (phase == "Running" and not cs.get("ready"))
        if phase in HEALTHY_PHASES and not not_ready:
            continue
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        lines.append(f"{where} {phase} on {pod.get('spec', {}).get('nodeName') or 'no node'}: "
                     + ("; ".join(reasons) or "no reason given"))
    return lines


def node_lines(nodes: dict) -> list[str]:
    """Each node's conditions that are not as a healthy node has them, its taints and its allocatable cpu/memory."""
    lines = []
    for node in nodes.get("items") or []:
        name = (node.get("metadata") or {}).get("name")
        status = node.get("status") or {}
        bad = [f"{c['type']}={c['status']} ({c.get('reason', '')}: {c.get('message', '')})"
               for c in status.get("conditions") or []
               if (c.get("type") == "Ready") != (c.get("status") == "True")]
        taints = [f"{t.get('key')}:{t.get('effect')}" for t in (node.get("spec") or {}).get("taints") or []]
        alloc = status.get("allocatable") or {}
        lines.append(f"node {name}: " + ("healthy conditions" if not bad else "; ".join(bad))
                     + f"; taints {taints or 'none'}; allocatable cpu {alloc.get('cpu')} memory {alloc.get('memory')}")
    return lines


def warning_events(events: dict, last: int = 25) -> list[str]:
    """The newest Warning events, oldest first."""
    items = [e for e in events.get("items") or [] if e.get("type") == "Warning"]
    items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    out = []
    for e in items[-last:]:
        obj = e.get("involvedObject") or {}
        out.append(f"{e.get('lastTimestamp') or e.get('eventTime')} {obj.get('kind')} "
                   f"{obj.get('namespace')}/{obj.get('name')} {e.get('reason')}: {(e.get('message') or '')[:300]}"
                   + (f" (x{e['count']})" if (e.get("count") or 1) > 1 else ""))
    return out


def interesting_log_lines(text: str, last: int = 20) -> list[str]:
    lines = [ln for ln in text.splitlines() if PROBLEM_LINE.search(ln)]
    return [ln[:400] for ln in lines[-last:]]


def _section(kubectl, what: list[str], render) -> list[str]:
    """render(kubectl get WHAT -o json), or the reason kubectl could not say."""
    try:
        proc = kubectl("get", *what, "-o", "json", check=False, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"kubectl get {' '.join(what)}: {e}"]
    if proc.returncode != 0:
        return [f"kubectl get {' '.join(what)} failed: {(proc.stderr or '').strip()[-300:]}"]
    try:
        return render(json.loads(proc.stdout)) or ["none"]
    except ValueError as e:
        return [f"kubectl get {' '.join(what)}: unreadable JSON ({e})"]


def _host_lines(paths: list[str]) -> list[str]:
    lines = []
    for p in paths:
        if Path(p).exists():
            u = shutil.disk_usage(p)
            lines.append(f"disk {p}: {u.free / 2**30:.1f} GiB free of {u.total / 2**30:.1f} GiB")
    try:
        meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines() if ":" in ln)
        lines.append(f"memory available: {meminfo.get('MemAvailable', '?').strip()}; "
                     f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    except OSError:
        pass
    return lines


def diagnose(kubectl, log_dir: Path | None, disk_paths: list[str]) -> str:
    """A short report: nodes, unhealthy pods, warning events, the host's disk and memory, the kubelet's and
    containerd's recent error lines. `kubectl` is a KubeTools.kubectl; nothing here raises."""
    sections = [("nodes", _section(kubectl, ["nodes"], node_lines)),
                ("pods not running or not ready", _section(kubectl, ["pods", "-A"], pod_problems)),
                ("warning events", _section(kubectl, ["events", "-A"], warning_events))]
    sections.append(("host", _host_lines(disk_paths)))
    for name in ("kubelet", "containerd"):
        path = log_dir / f"{name}.log" if log_dir else None
        if path and path.is_file():
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 400_000))
                tail = f.read().decode("utf-8", "replace")
            sections.append((f"{name} log ({path}), recent errors", interesting_log_lines(tail) or ["none"]))
    return "\n".join(f"-- {title}\n" + "\n".join("   " + ln for ln in lines) for title, lines in sections)
