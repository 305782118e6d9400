"""The real cluster's teardown check (tests/cluster/cluster.py): what counts as left behind or removed."""

from tests.support.modules import load_file_module
from tests.support.paths import REPO

cluster = load_file_module("eft_test_cluster", REPO / "tests" / "cluster" / "cluster.py")


def snap(**kinds):
    return {"iptables chains": [], "iptables rules": [], "links": [], "mounts": [], **kinds}


def test_what_the_cluster_leaves_or_removes_is_reported():
    before = snap(links=["lo", "eth0"], mounts=["/", "/data"])
    after = snap(links=["lo", "eth0", "cni0"], mounts=["/"], **{"iptables chains": [":KUBE-SERVICES iptables-save"]})
    assert cluster.snapshot_difference(before, after) == {
        "links": {"left behind": ["cni0"], "gone": []},
        "mounts": {"left behind": [], "gone": ["/data"]},
        "iptables chains": {"left behind": [":KUBE-SERVICES iptables-save"], "gone": []}}


def test_podmans_network_and_an_earlier_kube_proxys_chains_are_not_the_clusters():
    earlier = [":KUBE-FIREWALL iptables-save", '-A INPUT -j KUBE-FIREWALL']
    before = snap(links=["lo"], **{"iptables chains": earlier[:1], "iptables rules": earlier[1:]})
    after = snap(links=["lo", "cni-podman0"], **{"iptables rules": [
        '-A POSTROUTING -s 10.88.0.4/32 -m comment --comment "name: \\"podman\\" id: \\"abc\\"" -j CNI-1234']})
    assert cluster.snapshot_difference(before, after) == {}
    assert cluster.snapshot_difference(snap(), snap(**{"iptables rules": earlier[1:]})) == {
        "iptables rules": {"left behind": earlier[1:], "gone": []}}  # a KUBE rule left behind still counts


def _host(tmp_path, state, run_dir_exists):
    """A stand-in for tests/cluster/cluster.py's host side: what the baseline function reads and calls."""
    from types import SimpleNamespace

    run_dir = tmp_path / "eft-cluster"
    if run_dir_exists:
        run_dir.mkdir(parents=True)
    host = {"mounts": ["/", str(run_dir / "kubelet")] if run_dir_exists else ["/"]}
    calls = []

    def run_cluster_py(*args):
        calls.append(args)
        host["mounts"] = ["/"]  # `down` removes what the killed cluster left
        return SimpleNamespace(returncode=0, stderr="")

    cl = SimpleNamespace(RUN_DIR=run_dir, read_state=lambda: state, host_snapshot=lambda: {"mounts": list(host["mounts"])})
    return cl, run_cluster_py, calls


def test_a_cluster_an_earlier_run_left_is_torn_down_before_the_baseline(tmp_path):
    from tests.support.cluster import clean_host_snapshot

    # the CI failure this guards against: a killed run's mounts in the baseline, reported "gone" after `down`
    cl, run, calls = _host(tmp_path, {"supervisor": 999999}, run_dir_exists=True)
    assert clean_host_snapshot(cl, run) == {"mounts": ["/"]}
    assert calls == [("down",)]
    cl, run, calls = _host(tmp_path / "b", None, run_dir_exists=True)  # run folder without a state file
    assert clean_host_snapshot(cl, run) == {"mounts": ["/"]} and calls == [("down",)]


def test_a_clean_host_is_recorded_as_it_is(tmp_path):
    from tests.support.cluster import clean_host_snapshot

    cl, run, calls = _host(tmp_path, None, run_dir_exists=False)
    assert clean_host_snapshot(cl, run) == {"mounts": ["/"]}
    assert calls == []
