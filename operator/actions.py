"""What a reconcile does to the children: the actions the controller applies, and what stops them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eft.controller import builders as b


@dataclass(frozen=True)
class Action:
    verb: str  # create | update | delete | set-owners
    kind: str
    name: str
    obj: dict[str, Any] | None = None
    uid: str | None = None  # delete precondition
    owners: list[dict[str, Any]] | None = None
    resource_version: str | None = None

    def __str__(self) -> str:
        return f"{self.verb} {self.kind}/{self.name}"


@dataclass
class Changes:
    """The actions planned for the children of the EmbeddingFinetune ``uid``, in the order they apply,
    and the blockers: children the plan needs but may not touch (someone else's object of that name)."""

    uid: str
    actions: list[Action] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def create(self, desired: dict[str, Any]) -> None:
        self.actions.append(Action("create", desired["kind"], desired["metadata"]["name"], desired))

    def delete(self, kind: str, current: dict[str, Any]) -> None:
        self.actions.append(Action("delete", kind, current["name"], uid=current.get("uid")))

    def set_owners(self, kind: str, current: dict[str, Any], owners: list[dict[str, Any]]) -> None:
        self.actions.append(Action("set-owners", kind, current["name"], owners=owners,
                                   resource_version=current.get("resourceVersion")))

    def owns(self, current: dict[str, Any] | None) -> bool:
        return current is not None and current.get("owner") == self.uid

    def ensure(self, desired: dict[str, Any], current: dict[str, Any] | None, update: bool = True) -> None:
        """Create ``desired`` when missing; update it when its desired-hash changed (``update``)."""
        kind, name = desired["kind"], desired["metadata"]["name"]
        if current is None:
            self.create(desired)
        elif not self.owns(current):
            self.blockers.append(f"{kind} {name} exists but is not owned by this EmbeddingFinetune")
        elif update and current.get("hash") != desired["metadata"].get("annotations", {}).get(b.HASH_ANNOTATION):
            self.actions.append(Action("update", kind, name, desired))
