"""The chart's tenant roles against the real authorizer: after a real `helm install`, the clusterrole-aggregation
controller folds them into the built-in view, edit and admin ClusterRoles, and real users with their own tokens
get EmbeddingFinetunes exactly where a RoleBinding to view/edit/admin gives them Deployments: alice (edit) and
carol (admin) in namespace A, bob (view) in A, nobody in B. Nobody but the operator writes the status.

The shared control plane has no users but its admin, so this module starts its own with a token per user."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from eft.spec import API_GROUP, API_VERSION, KIND, PLURAL
from tests.support.controlplane import ControlPlane, load_build_module
from tests.support.helm import CHART
from tests.support.kubelet import wait_for

pytestmark = pytest.mark.kube

NS_A, NS_B, RELEASE_NS = "tenant-a", "tenant-b", "eft-system"
RELEASE = "eft"
BINDINGS = {"alice": "edit", "bob": "view", "carol": "admin"}  # user -> built-in ClusterRole, in NS_A only
GROUP = "eft-tenants"
RESOURCE = f"{PLURAL}.{API_GROUP}"
READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete", "deletecollection"}
AGGREGATION_TIMEOUT = 60


def _client():
    from kubernetes import client

    return client


def _efr(name: str, spec: dict | None = None) -> dict:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec or {}}


def _forbidden(call, *args, **kwargs) -> str:
    """Run an API call that must be refused by the authorizer; return the server's message."""
    client = _client()
    with pytest.raises(client.ApiException) as e:
        call(*args, **kwargs)
    assert e.value.status == 403, (e.value.status, e.value.body)
    body = json.loads(e.value.body)
    assert body["reason"] == "Forbidden", body
    return body["message"]


class Tenants:
    """The dedicated control plane, each user's token and API client."""

    def __init__(self, cp: ControlPlane, tokens: dict[str, str]):
        self.cp = cp
        self.tokens = tokens
        self.admin = cp.api_client()
        self.clients = {u: cp.api_client(token=t) for u, t in tokens.items()}

    def objects(self, user: str | None = None):
        return _client().CustomObjectsApi(self.clients[user] if user else self.admin)

    def kubectl_as(self, user: str, *args, check: bool = False, input: str | None = None):
        # --token replaces the kubeconfig's admin credentials: the request is the user's own
        return self.cp.kubectl("--token", self.tokens[user], *args, check=check, input=input)

    def allowed(self, user: str, verb: str, namespace: str, subresource: str = "") -> bool:
        """A SubjectAccessReview (what `kubectl auth can-i --as` asks), answered by the RBAC authorizer."""
        client = _client()
        review = client.AuthorizationV1Api(self.admin).create_subject_access_review(client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(user=user, groups=[GROUP, "system:authenticated"],
                                                  resource_attributes=client.V1ResourceAttributes(
                                                      group=API_GROUP, resource=PLURAL, subresource=subresource,
                                                      verb=verb, namespace=namespace))))
        return review.status.allowed

    def close(self):
        for api in (self.admin, *self.clients.values()):
            api.close()


@pytest.fixture(scope="module")
def tenant_cluster(request, control_plane_binaries):
    tokens = {u: f"{u}-{uuid.uuid4().hex}" for u in BINDINGS}
    # token,user,uid,"group1,group2" (kube-apiserver --token-auth-file)
    extra = tuple(f'{tok},{user},{user}-uid,"{GROUP}"' for user, tok in tokens.items())
    build = load_build_module()
    for attempt in (1, 2):
        cp = ControlPlane(control_plane_binaries, versions=build.versions(), extra_tokens=extra)
        try:
            cp.start()
            break
        except Exception as e:
            if attempt == 1 and "address already in use" in str(e):  # a probed port taken meanwhile
                cp.cleanup(keep=False)
                continue
            cp.cleanup(keep=True)
            raise
    tenants = Tenants(cp, tokens)
    try:
        yield tenants
    finally:
        tenants.close()
        keep = request.session.testsfailed > 0 or os.environ.get("EFT_KEEP_CONTROLPLANE_LOGS") == "1"
        cp.cleanup(keep=keep)
        if keep:
            print(f"tenant control plane logs kept in {cp.workdir}")


def _eft_rules(cp: ControlPlane, role: str) -> set[tuple[str, str]]:
    """(resource, verb) pairs of eft.ai rules in a ClusterRole."""
    got = json.loads(cp.kubectl("get", "clusterrole", role, "-o", "json").stdout)
    return {(r, v) for rule in got.get("rules") or [] if API_GROUP in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


def _wait_aggregated(t: Tenants, present: bool) -> None:
    """Until the aggregation controller put the tenant rules into (or took them out of) the built-in roles,
    and the RBAC authorizer (informer-fed) answers accordingly."""
    cp = t.cp

    def done():
        view, edit, admin = (_eft_rules(cp, r) for r in ("view", "edit", "admin"))
        if present:
            return (PLURAL, "get") in view and (PLURAL, "create") in edit and (PLURAL, "create") in admin
        return not (view or edit or admin)

    try:
        wait_for(done, timeout=AGGREGATION_TIMEOUT, interval=0.5, what="aggregation")
    except TimeoutError:
        log = cp.log_dir / "kube-controller-manager.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
        pytest.fail(f"the clusterrole-aggregation controller did not {'add' if present else 'remove'} the "
                    f"EmbeddingFinetune rules {'to' if present else 'from'} the built-in roles within "
                    f"{AGGREGATION_TIMEOUT}s; eft.ai rules of edit: {sorted(_eft_rules(cp, 'edit'))}, of view: "
                    f"{sorted(_eft_rules(cp, 'view'))}; kube-controller-manager log:\n{tail}", pytrace=False)
    wait_for(lambda: t.allowed("alice", "create", NS_A) is present, timeout=30,
             what=f"the RBAC authorizer to {'grant' if present else 'revoke'} alice's create in {NS_A}")


@pytest.fixture(scope="module")
def tenants(tenant_cluster):
    """The chart installed for real, namespaces A and B, the RoleBindings in A, aggregation done."""
    t = tenant_cluster
    cp = t.cp
    for ns in (RELEASE_NS, NS_A, NS_B):
        cp.kubectl("create", "namespace", ns)
    cp.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS)
    for user, role in BINDINGS.items():
        cp.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}",
                   "-n", NS_A)
    _wait_aggregated(t, present=True)
    return t


# --------------------------------------------------------------------------- the roles as aggregated


def test_built_in_roles_hold_the_tenant_rules(tenants):
    """The aggregation chain the chart relies on (view -> edit -> admin, tests/unit/deploy/test_tenant_roles.py),
    as this Kubernetes has it, and what it made of the chart's roles."""
    cp = tenants.cp
    roles = {n: json.loads(cp.kubectl("get", "clusterrole", n, "-o", "json").stdout) for n in BINDINGS.values()}
    assert roles["view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert roles["edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    for name, role in roles.items():
        assert role["aggregationRule"]["clusterRoleSelectors"] == [
            {"matchLabels": {f"rbac.authorization.k8s.io/aggregate-to-{name}": "true"}}]
    read = {(r, v) for r in (PLURAL, f"{PLURAL}/status") for v in READ}
    write = {(PLURAL, v) for v in WRITE}
    assert _eft_rules(cp, "view") == read
    assert _eft_rules(cp, "edit") == read | write
    assert _eft_rules(cp, "admin") == read | write
    fullname = f"{RELEASE}-eft-operator"
    for level in ("view", "edit", "admin"):
        cp.kubectl("get", "clusterrole", f"{fullname}-tenant-{level}")


# --------------------------------------------------------------------------- alice: edit in A


def test_editor_works_with_embeddingfinetunes_in_her_namespace(tenants):
    from kubernetes import watch

    alice = tenants.objects("alice")
    args = (API_GROUP, API_VERSION, NS_A, PLURAL)
    created = alice.create_namespaced_custom_object(*args, _efr("alices"))
    assert created["metadata"]["name"] == "alices"
    stored = alice.get_namespaced_custom_object(*args, "alices")["spec"]["training"]
    assert stored["preset"] == "measured" and "epochs" not in stored  # defaulted by the CRD; epochs by the preset
    assert "alices" in [o["metadata"]["name"] for o in alice.list_namespaced_custom_object(*args)["items"]]
    w = watch.Watch()
    events = []
    for ev in w.stream(alice.list_namespaced_custom_object, *args, timeout_seconds=2):
        events.append((ev["type"], ev["object"]["metadata"]["name"]))
        w.stop()
    assert ("ADDED", "alices") in events

    patched = alice.patch_namespaced_custom_object(*args, "alices", {"spec": {"training": {"epochs": 5}}})
    assert patched["spec"]["training"]["epochs"] == 5
    assert alice.get_namespaced_custom_object_status(*args, "alices")["metadata"]["name"] == "alices"

    # the status is the operator's: the status subresource refuses her ...
    msg = _forbidden(alice.patch_namespaced_custom_object_status, *args, "alices", {"status": {"phase": "Succeeded"}})
    assert (f'User "alice" cannot patch resource "{PLURAL}/status" in API group "{API_GROUP}" '
            f'in the namespace "{NS_A}"') in msg, msg
    _forbidden(alice.replace_namespaced_custom_object_status, *args, "alices",
               {**alice.get_namespaced_custom_object(*args, "alices"), "status": {"phase": "Succeeded"}})
    # ... and the main resource ignores .status (the CRD's status subresource)
    after = alice.patch_namespaced_custom_object(*args, "alices", {"status": {"phase": "Succeeded"}})
    assert after.get("status", {}).get("phase") != "Succeeded"

    # and kubectl, with her token, says the same
    out = tenants.kubectl_as("alice", "-n", NS_A, "get", RESOURCE, "alices", "-o", "name", check=True).stdout
    assert out.strip() == f"{KIND.lower()}.{API_GROUP}/alices"  # -o name spells the kind


def test_editor_has_nothing_in_another_namespace(tenants):
    alice = tenants.objects("alice")
    proc = tenants.kubectl_as("alice", "-n", NS_B, "create", "-f", "-", input=json.dumps(_efr("intruder")))
    assert proc.returncode != 0
    assert "Error from server (Forbidden)" in proc.stderr, proc.stderr
    assert (f'User "alice" cannot create resource "{PLURAL}" in API group "{API_GROUP}" '
            f'in the namespace "{NS_B}"') in proc.stderr, proc.stderr
    msg = _forbidden(alice.create_namespaced_custom_object, API_GROUP, API_VERSION, NS_B, PLURAL, _efr("intruder"))
    assert f'cannot create resource "{PLURAL}"' in msg and f'"{NS_B}"' in msg
    msg = _forbidden(alice.list_namespaced_custom_object, API_GROUP, API_VERSION, NS_B, PLURAL)
    assert f'User "alice" cannot list resource "{PLURAL}" in API group "{API_GROUP}" in the namespace "{NS_B}"' \
        in msg, msg
    # nor cluster-wide
    _forbidden(alice.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)


# --------------------------------------------------------------------------- bob: view in A


def test_viewer_reads_but_cannot_write(tenants):
    admin, bob = tenants.objects(), tenants.objects("bob")
    args = (API_GROUP, API_VERSION, NS_A, PLURAL)
    admin.create_namespaced_custom_object(*args, _efr("shared"))
    assert bob.get_namespaced_custom_object(*args, "shared")["metadata"]["name"] == "shared"
    assert bob.get_namespaced_custom_object_status(*args, "shared")["metadata"]["name"] == "shared"
    assert "shared" in [o["metadata"]["name"] for o in bob.list_namespaced_custom_object(*args)["items"]]
    msg = _forbidden(bob.create_namespaced_custom_object, *args, _efr("bobs"))
    assert f'User "bob" cannot create resource "{PLURAL}" in API group "{API_GROUP}" in the namespace "{NS_A}"' \
        in msg, msg
    _forbidden(bob.patch_namespaced_custom_object, *args, "shared", {"spec": {"training": {"epochs": 1}}})
    _forbidden(bob.patch_namespaced_custom_object_status, *args, "shared", {"status": {"phase": "Failed"}})
    _forbidden(bob.delete_namespaced_custom_object, *args, "shared")
    _forbidden(bob.list_namespaced_custom_object, API_GROUP, API_VERSION, NS_B, PLURAL)


# --------------------------------------------------------------------------- access reviews


def test_access_reviews(tenants):
    """`kubectl auth can-i` with each user's own token (a SelfSubjectAccessReview), and SubjectAccessReviews."""
    def can_i(user, *args):
        proc = tenants.kubectl_as(user, "auth", "can-i", *args)
        return proc.stdout.strip()

    assert can_i("alice", "create", RESOURCE, "-n", NS_A) == "yes"
    assert can_i("alice", "deletecollection", RESOURCE, "-n", NS_A) == "yes"
    assert can_i("alice", "create", RESOURCE, "-n", NS_B) == "no"
    assert can_i("alice", "patch", RESOURCE, "--subresource=status", "-n", NS_A) == "no"
    assert can_i("bob", "watch", RESOURCE, "-n", NS_A) == "yes"
    assert can_i("bob", "update", RESOURCE, "-n", NS_A) == "no"

    for verb in sorted(READ | WRITE):
        assert tenants.allowed("carol", verb, NS_A), verb  # admin = edit
        assert tenants.allowed("alice", verb, NS_A), verb
        assert tenants.allowed("bob", verb, NS_A) is (verb in READ), verb
        for user in BINDINGS:
            assert not tenants.allowed(user, verb, NS_B), (user, verb)
    for user in BINDINGS:
        assert tenants.allowed(user, "get", NS_A, subresource="status")
        for verb in ("update", "patch"):
            assert not tenants.allowed(user, verb, NS_A, subresource="status"), (user, verb)
    # the operator's finalizers subresource stays the operator's too
    assert not tenants.allowed("carol", "update", NS_A, subresource="finalizers")


def test_editor_deletes_in_her_namespace(tenants):
    alice = tenants.objects("alice")
    args = (API_GROUP, API_VERSION, NS_A, PLURAL)
    alice.create_namespaced_custom_object(*args, _efr("doomed"))
    alice.delete_namespaced_custom_object(*args, "doomed")
    _forbidden(alice.delete_namespaced_custom_object, API_GROUP, API_VERSION, NS_B, PLURAL, "anything")


# --------------------------------------------------------------------------- last: uninstall revokes


def test_uninstall_revokes_the_tenant_rights(tenants):
    """The aggregated rules leave the built-in roles with the release; the RoleBindings stay, the rights go."""
    tenants.cp.helm("uninstall", RELEASE, "--namespace", RELEASE_NS)
    _wait_aggregated(tenants, present=False)
    assert _eft_rules(tenants.cp, "admin") == set() and _eft_rules(tenants.cp, "view") == set()
    msg = _forbidden(tenants.objects("alice").list_namespaced_custom_object, API_GROUP, API_VERSION, NS_A, PLURAL)
    assert f'User "alice" cannot list resource "{PLURAL}"' in msg
    tenants.cp.kubectl("get", "crd", RESOURCE)  # Helm never deletes crds/
