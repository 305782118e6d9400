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
