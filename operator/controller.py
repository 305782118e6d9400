"""The reconcile loop: a work queue of EmbeddingFinetune keys, the pure plan, and the thin executor.

Any watch event (the EmbeddingFinetune itself, or one of its Jobs, pods, Deployments, ...) only
*enqueues* the owner's key; a worker then reads the latest resource and the children from the kopf
caches, asks :func:`eft.controller.plan.plan` what to do, applies the actions, writes the status and
posts an Event per transition. One key is never reconciled twice at once; different keys run in
parallel (``Settings.workers``); every key is also reconciled every ``Settings.resync_seconds``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

from eft.controller import builders as b
from eft.controller.actions import Action
from eft.controller.children import Children, controller_uid
from eft.controller.kube import Kube, KubeError
from eft.controller.plan import Plan, plan
from eft.controller.settings import Settings
from eft.controller.status import iso

log = logging.getLogger("eft.operator")

Key = tuple[str, str]  # (namespace, name)

INDEX_NAMES = ("eft_jobs", "eft_stage_pods", "eft_configmaps", "eft_claims", "eft_deployments", "eft_services",
               "eft_disruption_budgets", "eft_autoscalers", "eft_network_policies")


class WorkQueue:
    """A deduplicating queue: a key is queued at most once and never handed to two workers at once."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}

    def add(self, key: Key) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        prev = self._timers.get(key)
        if prev is not None:
            if prev[0] <= due:
                return
            prev[1].cancel()
        self._timers[key] = (due, loop.call_later(delay, self._fire, key))

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._queued)


class Controller:
    def __init__(self, settings: Settings, kube_factory: Callable[[], Kube] | None = None):
        self.settings = settings
        self._kube_factory = kube_factory or Kube
        self.kube: Kube | None = None
        self.queue: WorkQueue | None = None
        self.resources: dict[Key, dict[str, Any]] = {}
        self.indices: dict[str, Any] = {}
        # status this process wrote last, by uid -> (resourceVersion after the write, status)
        self.written: dict[str, tuple[str, dict[str, Any]]] = {}
        # uids this process deleted: hidden from plan until the caches drop them
        self.deleted: dict[str, float] = {}
        self.failures: dict[Key, int] = {}
        self._tasks: list[asyncio.Task] = []
        self.reconciles = 0

    # ---- lifecycle

    async def start(self) -> None:
        self.kube = self._kube_factory()
        self.queue = WorkQueue()
        for i in range(max(1, self.settings.workers)):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"eft-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._resync(), name="eft-resync"))
        log.info("operator started: image %s, %d workers, resync every %gs", self.settings.image,
                 self.settings.workers, self.settings.resync_seconds)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # ---- inputs from kopf

    def bind_indices(self, kwargs: dict[str, Any]) -> None:
        for n in INDEX_NAMES:
            if n in kwargs:
                self.indices[n] = kwargs[n]

    def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            self.resources.pop(key, None)
            self.written.pop(meta.get("uid"), None)
            self.failures.pop(key, None)
            return
        self.resources[key] = copy.deepcopy(dict(body))
        self.enqueue(key)

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        if self.queue is None or key[1] is None:
            return
        if delay > 0:
            self.queue.add_after(key, delay)
        else:
            self.queue.add(key)

    # ---- loops

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            now = time.monotonic()
            self.deleted = {u: t for u, t in self.deleted.items() if now - t < 300}
            for key in list(self.resources):
                self.enqueue(key)

    async def _worker(self) -> None:
        assert self.queue is not None
        while True:
            key = await self.queue.get()
            try:
                requeue = await self.reconcile(key)
                self.failures.pop(key, None)
                if requeue:
                    self.enqueue(key, requeue)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one object's trouble must not stop the others
                n = self.failures.get(key, 0) + 1
                self.failures[key] = n
                delay = min(60.0, 0.5 * 2 ** n)
                log.warning("reconcile %s/%s failed (retry in %.1fs): %s", key[0], key[1], delay, exc,
                            exc_info=not isinstance(exc, KubeError))
                self.enqueue(key, delay)
            finally:
                self.queue.done(key)

    # ---- reconcile

    def children(self, namespace: str, name: str) -> Children:
        key = (namespace, name)

        def values(index: str, k: Any = key) -> list[dict[str, Any]]:
            idx = self.indices.get(index)
            if idx is None:
                return []
            try:
                return [v for v in idx.get(k, ()) if v.get("uid") not in self.deleted]
            except TypeError:
                return []

        jobs = values("eft_jobs")
        pods = {j["name"]: values("eft_stage_pods", (namespace, j["name"])) for j in jobs}
        return Children(jobs=jobs, pods=pods, configmaps=values("eft_configmaps"), claims=values("eft_claims"),
                        deployments=values("eft_deployments"), services=values("eft_services"),
                        disruption_budgets=values("eft_disruption_budgets"), autoscalers=values("eft_autoscalers"),
                        network_policies=values("eft_network_policies"))

    def current_body(self, key: Key) -> dict[str, Any] | None:
        body = self.resources.get(key)
        if body is None:
            return None
        body = copy.deepcopy(body)
        meta = body.get("metadata") or {}
        written = self.written.get(meta.get("uid"))
        if written is not None:
            rv, status = written
            if not _newer(meta.get("resourceVersion"), rv):
                body["status"] = copy.deepcopy(status)
        return body

    async def reconcile(self, key: Key) -> float | None:
        body = self.current_body(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        self.reconciles += 1
        now = datetime.now(timezone.utc)
        p: Plan = plan(body, self.children(*key), self.settings, now, ignored_uids=set(self.deleted))
        requeue = p.requeue_after
        for action in p.actions:
            try:
                await asyncio.to_thread(self._apply, body, action)
            except _Blocked as exc:
                log.warning("%s/%s: %s", key[0], key[1], exc)
                requeue = 10.0
                break
        # Events before the status that records the transition: a crash in between repeats an Event
        # rather than losing one.
        for etype, reason, message in p.events:
            await asyncio.to_thread(self._post_event, body, etype, reason, message, iso(now))
        if p.status != (body.get("status") or {}):
            await self._write_status(body, p.status)
        return requeue

    # ---- executor (worker threads)

    def _apply(self, efr: dict[str, Any], a: Action) -> None:
        assert self.kube is not None
        ns, uid = efr["metadata"]["namespace"], efr["metadata"]["uid"]
        if a.verb == "create":
            try:
                self.kube.create(a.obj)
                log.info("%s/%s: created %s %s", ns, efr["metadata"]["name"], a.kind, a.name)
            except KubeError as exc:
                if exc.status != 409:
                    raise
                self._adopt(efr, a)
        elif a.verb == "update":
            current = self.kube.get(a.kind, ns, a.name)
            if _controller_uid(current) != uid:
                raise _Blocked(f"{a.kind} {a.name} is not owned by this EmbeddingFinetune; not updating it")
            desired = copy.deepcopy(a.obj)
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if a.kind == "Service":  # allocated by the API server; a PUT must carry them
                for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                    if k in current.get("spec", {}) and k not in desired["spec"]:
                        desired["spec"][k] = current["spec"][k]
            if a.kind == "Deployment" and "replicas" not in desired["spec"] and "replicas" in current.get("spec", {}):
                # autoscaled: the HorizontalPodAutoscaler owns the replica count (a PUT without it would reset 1)
                desired["spec"]["replicas"] = current["spec"]["replicas"]
            for k in ("annotations", "labels"):
                merged = dict(current["metadata"].get(k) or {})
                merged.update(desired["metadata"].get(k) or {})
                desired["metadata"][k] = merged
            self.kube.replace(desired)
            log.info("%s/%s: updated %s %s", ns, efr["metadata"]["name"], a.kind, a.name)
        elif a.verb == "delete":
            try:
                self.kube.delete(a.kind, ns, a.name, uid=a.uid)
                log.info("%s/%s: deleted superseded %s %s", ns, efr["metadata"]["name"], a.kind, a.name)
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
            if a.uid:
                self.deleted[a.uid] = time.monotonic()
        elif a.verb == "set-owners":
            patch = {"metadata": {"ownerReferences": a.owners or None}}
            if a.resource_version:
                patch["metadata"]["resourceVersion"] = a.resource_version
            self.kube.patch(a.kind, ns, a.name, patch)
            log.info("%s/%s: set the owners of %s %s (retentionPolicy)", ns, efr["metadata"]["name"], a.kind,
                     a.name)
        else:  # pragma: no cover
            raise ValueError(a.verb)

    def _adopt(self, efr: dict[str, Any], a: Action) -> None:
        """A 409 on create: the object exists (our earlier create, a cache not caught up yet, or a
        previous operator). Read it; use it when it is ours, never create a second one."""
        assert self.kube is not None
        meta = efr["metadata"]
        current = self.kube.get(a.kind, meta["namespace"], a.name)
        owner = _controller_uid(current)
        if owner == meta["uid"]:
            log.info("%s/%s: %s %s already exists (ours): adopted", meta["namespace"], meta["name"], a.kind, a.name)
            return
        labels = current["metadata"].get("labels") or {}
        if (a.kind == "PersistentVolumeClaim" and owner is None
                and labels.get(b.INSTANCE_LABEL) == meta["name"] and labels.get(b.NAME_LABEL) == "eft"):
            # A workspace retained from an earlier EmbeddingFinetune of the same name: reuse it.
            owners = a.obj["metadata"].get("ownerReferences")
            if owners:
                self.kube.patch(a.kind, meta["namespace"], a.name, {"metadata": {
                    "ownerReferences": (current["metadata"].get("ownerReferences") or []) + owners,
                    "resourceVersion": current["metadata"]["resourceVersion"]}})
            log.info("%s/%s: reusing retained workspace claim %s", meta["namespace"], meta["name"], a.name)
            return
        raise _Blocked(f"{a.kind} {a.name} exists and is owned by {owner or 'nobody'}, not by this "
                       f"EmbeddingFinetune (uid {meta['uid']})")

    async def _write_status(self, efr: dict[str, Any], status: dict[str, Any]) -> None:
        assert self.kube is not None
        meta = efr["metadata"]
        patch = [{"op": "add", "path": "/status", "value": status}]
        try:
            resp = await asyncio.to_thread(self.kube.patch, b.KIND, meta["namespace"], meta["name"], patch,
                                           "status", "application/json-patch+json")
        except KubeError as exc:
            if exc.status == 404:
                return
            raise
        self.written[meta["uid"]] = ((resp.get("metadata") or {}).get("resourceVersion") or "", status)

    def _post_event(self, efr: dict[str, Any], etype: str, reason: str, message: str, now: str) -> None:
        assert self.kube is not None
        try:
            self.kube.create(b.build_event(efr, etype, reason, message, now))
        except KubeError as exc:  # events are best effort
            log.debug("event %s not posted: %s", reason, exc)
        (log.warning if etype == "Warning" else log.info)(
            "%s/%s: %s: %s", efr["metadata"]["namespace"], efr["metadata"]["name"], reason, message)


class _Blocked(Exception):
    pass


def _controller_uid(obj: dict[str, Any]) -> str | None:
    return controller_uid(obj.get("metadata") or {})


def _newer(cache_rv: str | None, written_rv: str | None) -> bool:
    """Is the cached resource at least as new as what this process wrote? (etcd revisions are ints)"""
    if not written_rv:
        return True
    try:
        return int(cache_rv or 0) >= int(written_rv)
    except ValueError:
        return cache_rv == written_rv
