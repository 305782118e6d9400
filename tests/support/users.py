"""Real users of a test cluster: a client certificate signed by the cluster's CA, in a kubeconfig of its own.

The API server authenticates the certificate's CN as the user name and its O fields as groups (x509 client
auth, --client-ca-file), so RBAC sees a user exactly as it sees a person with a kubeconfig from their platform.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def user_kubeconfig(admin_kubeconfig: str | Path, pki: Path, user: str, groups: tuple[str, ...] = (),
                    out_dir: Path | None = None) -> Path:
    """A kubeconfig for ``user`` (in ``groups``) on the cluster of ``admin_kubeconfig``, whose CA is in ``pki``."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    out_dir = Path(out_dir or pki.parent / "users")
    out_dir.mkdir(parents=True, exist_ok=True)
    key, csr, crt = (out_dir / f"{user}.{ext}" for ext in ("key", "csr", "crt"))
    subject = "/CN=" + user + "".join(f"/O={g}" for g in groups)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                    "-subj", subject], check=True, capture_output=True)
    ext = out_dir / f"{user}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey",
                    str(pki / "ca.key"), "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext)],
                   check=True, capture_output=True)
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
        "current-context": user,
    }
    path = out_dir / f"{user}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path
