"""fabric.node.auth and the secrets store given what a user hands them:
tokens compared in constant time with every entry, a token shared by two
principals refused, TLS and secrets files that cannot be read or used named
with their role; a SecretRef anywhere in a request (a set, a map's key) is
resolved on the computing node."""

import json
import ssl
import subprocess

import pytest

import fabric
from fabric.node import auth
from fabric.node.auth import Tokens, client_tls, server_tls
from fabric.node.secrets import SecretStore

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789abc",
          "carol": "carol-token-0123456789"}


def test_a_token_is_compared_with_every_entry_in_constant_time(monkeypatch):
    """Every entry goes through hmac.compare_digest, the one that matches
    first or last or none alike (an ``==``, or a loop that stops at the
    match, would tell which principal's token it was by its time)."""
    calls = []
    real = auth.hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    t = Tokens(TOKENS)
    for presented, principal in [(TOKENS["alice"], "alice"), (TOKENS["carol"], "carol"),
                                 ("not-a-token-of-anyone", None)]:
        calls.clear()
        assert t.principal(presented) == principal
        assert [b for _, b in calls] == [v.encode() for v in TOKENS.values()]
        assert all(a == presented.encode() for a, _ in calls)
    calls.clear()
    assert t.principal(None) is None and t.principal(7) is None and not calls


def test_a_token_shared_by_two_principals_is_refused_without_showing_it():
    shared = "the-same-token-0123456789"
    with pytest.raises(ValueError, match="principals 'alice' and 'bob' have the same token"
                       ) as e:
        Tokens({"alice": shared, "bob": shared})
    assert shared not in str(e.value)
    assert shared not in repr(Tokens({"alice": shared}))


def test_a_tokens_file_sharing_a_token_is_named(tmp_path):
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"alice": "x" * 16, "bob": "x" * 16}))
    with pytest.raises(ValueError, match=f"^{f}: principals 'alice' and 'bob'"):
        Tokens(str(f))


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    d = tmp_path_factory.mktemp("pem")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key", "-out",
                        f"{name}.pem", "-days", "2", "-subj", f"/CN={name}"],
                       cwd=d, check=True, capture_output=True)
    (d / "text.pem").write_text("not a certificate\n")
    return d


@pytest.mark.parametrize("make", [server_tls, client_tls])
def test_tls_files_that_cannot_be_read_are_named_with_their_role(pem, make):
    cert, key, missing = str(pem / "a.pem"), str(pem / "a.key"), str(pem / "none.pem")
    args = {server_tls: lambda c, k, ca: make(c, k, ca),
            client_tls: lambda c, k, ca: make(ca, c, k)}[make]
    for c, k, ca, role in [(missing, key, None, "TLS certificate"),
                           (cert, missing, None, "TLS key"),
                           (cert, key, missing, "TLS CA")]:
        with pytest.raises(FileNotFoundError) as e:
            args(c, k, ca)
        assert e.value.filename == missing and f"(the {role} file)" in e.value.strerror
    with pytest.raises(IsADirectoryError, match="the TLS CA file"):
        args(cert, key, str(pem))
    with pytest.raises(TypeError, match="the TLS key file is a path, not int"):
        args(cert, 5, None)


@pytest.mark.parametrize("make", [server_tls, client_tls])
def test_tls_files_that_cannot_be_used_are_a_value_error_naming_them(pem, make):
    cert, key, text = str(pem / "a.pem"), str(pem / "a.key"), str(pem / "text.pem")
    args = {server_tls: lambda c, k, ca: make(c, k, ca),
            client_tls: lambda c, k, ca: make(ca, c, k)}[make]
    with pytest.raises(ValueError, match=f"the TLS certificate {text} and key {key} cannot"):
        args(text, key, None)
    # a key that is another certificate's
    with pytest.raises(ValueError, match="the key the certificate's"):
        args(cert, str(pem / "b.key"), None)
    with pytest.raises(ValueError, match=f"the TLS CA file {text} cannot be used"):
        args(cert, key, text)
    ctx = args(cert, key, str(pem / "b.pem"))  # and the good ones make a context
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_secrets_file_that_cannot_be_used_is_named(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(FileNotFoundError) as e:
        SecretStore(str(missing))
    assert e.value.filename == str(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=f"^{bad}: the secrets file is not valid JSON"):
        SecretStore(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"db": 7}))
    with pytest.raises(ValueError, match=f"^{wrong}: a secrets file is a JSON object"):
        SecretStore(wrong)  # (a Path too)
    with pytest.raises(TypeError, match="secrets must be the path of a JSON secrets file "
                                        "or a dict of name -> str, not int"):
        SecretStore(7)
    with pytest.raises(ValueError, match=r"secrets \(a dict\): .*name -> str"):
        SecretStore({"db": b"bytes"})
    assert SecretStore({"db": "hunter22"}, environ={}).value("db") == "hunter22"


def test_a_secret_ref_in_a_set_or_a_maps_key_is_resolved_too():
    """The store replaces a SecretRef wherever the request's walk finds one
    (fabric.values.walk: sets and map keys too), not only in lists and map
    values: a ref it skipped reached the op as a bare tuple."""
    store = SecretStore({"db": "hunter22"}, environ={})
    ref = fabric.SecretRef("db")

    @fabric.op("node.test.auth.anything")
    def anything(*a, **k):
        return None

    req = anything.request({ref}, frozenset([ref, 1]), {ref: 1}, [(ref,)], k={"x": [ref]})
    out = store.resolve(req, ["secret:db"])
    a, kw = out.args, out.kwargs
    secrets = [next(iter(a[0])), next(v for v in a[1] if v != 1), next(iter(a[2])),
               a[3][0][0], kw["k"]["x"][0]]
    assert all(isinstance(s, fabric.Secret) and s.reveal() == "hunter22" for s in secrets)
    assert type(a[0]) is set and type(a[1]) is frozenset and type(a[3][0]) is tuple
    with pytest.raises(fabric.CapabilityDenied, match="secret:db"):
        store.resolve(anything.request(frozenset([ref])), ["secret:other"])


def test_spellings_of_one_variable_name_one_secret():
    """``db-password``, ``db.password`` and ``DB_PASSWORD`` read one variable
    (FABRIC_SECRET_DB_PASSWORD): they are one secret, in the file and in the
    grants too, so the grant of one spelling reaches that secret and no
    other (before, a grant of ``secret:db.password`` resolved the variable of
    ``db-password``'s secret while naming another)."""
    @fabric.op("node.test.auth.spellings")
    def spelled(*a):
        return None

    env = {"FABRIC_SECRET_DB_PASSWORD": "from-env"}
    store = SecretStore({"api.key": "from-file"}, environ=env)
    for name in ("db-password", "db.password", "DB_PASSWORD", "Db-Password"):
        assert store.value(name) == "from-env"
    for name in ("api.key", "api-key", "API_KEY"):
        assert store.value(name) == "from-file"
    req = spelled.request(fabric.SecretRef("db.password"))
    out = store.resolve(req, ["secret:DB-PASSWORD"])  # a grant of another spelling: the same secret
    assert out.args[0].reveal() == "from-env"
    with pytest.raises(fabric.CapabilityDenied, match="secret:db.password"):
        store.resolve(req, ["secret:db-passwords", "secret:api.key"])
    with pytest.raises(ValueError, match=r"'db-password' and 'DB_PASSWORD' name one secret "
                                         r"\(FABRIC_SECRET_DB_PASSWORD\): keep one"):
        SecretStore({"db-password": "a", "DB_PASSWORD": "b"}, environ={})
    from fabric.placement import check_ref_grant
    check_ref_grant("db.password", frozenset({"secret:db_password"}), "here")
    with pytest.raises(fabric.CapabilityDenied, match="here: resolving SecretRef"):
        check_ref_grant("db.password", frozenset({"secret:db"}), "here")


@pytest.mark.parametrize("name", ["db\n", "", "a b", "x" * 129, "ключ", 7])
def test_a_secret_ref_name_outside_its_alphabet_is_refused(name):
    # ("db\n" passed: the pattern's $ matches before a final newline)
    with pytest.raises(ValueError, match="a SecretRef name is 1-128 of"):
        fabric.SecretRef(name)
    assert fabric.SecretRef("api-key.v2_1").name == "api-key.v2_1"


def test_a_tls_subject_value_cannot_read_as_more_attributes():
    """The principal of a certificate is its subject: a CN of
    ``alice,O=example`` (a CA that signs the CN a requester asks for) must
    not be the principal of a certificate with CN alice and O example."""
    from fabric.node.auth import tls_principal

    def principal(*rdns):
        return tls_principal({"subject": rdns})

    honest = principal((("commonName", "alice"),), (("organizationName", "example"),))
    assert honest == "CN=alice,O=example"
    forged = principal((("commonName", "alice,O=example"),))
    assert forged == "CN=alice\\,O\\=example" and forged != honest
    assert principal((("commonName", "a"), ("organizationName", "b"))) == "CN=a+O=b"
    assert principal((("commonName", "x+y"),)) == "CN=x\\+y"
    assert principal((("commonName", ' #q"<>;\\ '),)) == 'CN=\\ #q\\"\\<\\>\\;\\\\\\ '
    assert principal((("commonName", " "),)) == "CN=\\ "
    assert tls_principal(None) is None and tls_principal({}) is None


def test_a_certificate_whose_cn_holds_a_comma_is_its_own_principal(pem, tmp_path):
    """Over a real mutual-TLS connection (certificates made here)."""
    import socket
    import threading

    from fabric.node.auth import tls_principal

    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca")
    for name, subj in (("srv", "/CN=localhost"), ("odd", "/CN=alice\\,O=example")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj)
        (tmp_path / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    sctx = server_tls(str(tmp_path / "srv.pem"), str(tmp_path / "srv.key"),
                      str(tmp_path / "ca.pem"))
    cctx = client_tls(str(tmp_path / "ca.pem"), str(tmp_path / "odd.pem"),
                      str(tmp_path / "odd.key"))
    lsock = socket.create_server(("127.0.0.1", 0))
    seen = {}

    def serve():
        conn, _ = lsock.accept()
        with sctx.wrap_socket(conn, server_side=True) as tconn:
            seen["principal"] = tls_principal(tconn.getpeercert())
            tconn.recv(1)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(lsock.getsockname(), timeout=30) as raw:
            with cctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"x")
        t.join(30)
    finally:
        lsock.close()
    assert seen["principal"] == "CN=alice\\,O\\=example"
