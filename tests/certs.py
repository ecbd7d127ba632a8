"""Test certificates made by the ``openssl`` command: two CAs (``ca``,
``otherca``) and leaves signed by them, each ``NAME.pem`` with its
``NAME.key`` (P-256, unencrypted) in one folder."""

import subprocess

#: The leaves ``make_certs`` makes: name -> (its CA, its CN, days or
#: "expired", subjectAltName or None).
LEAVES = {
    "server": ("ca", "localhost", "2", "IP:127.0.0.1,DNS:localhost"),
    "alice": ("ca", "alice", "2", None),
    "mallory": ("otherca", "mallory", "2", None),
    "old": ("ca", "old", "expired", None),
}


def make_certs(d):
    """Write both CAs and every leaf of ``LEAVES`` into folder ``d``; returns ``d``."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "otherca"):
        run("req", "-x509", *curve, "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN={ca}")
    for name, (ca, cn, days, san) in LEAVES.items():
        run("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        ext = []
        if san:
            (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
            ext = ["-extfile", f"{name}.ext"]
        # "expired": -days -1 gives a notAfter one day in the past
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-out", f"{name}.pem", "-days", "-1" if days == "expired" else days, *ext)
    return d
