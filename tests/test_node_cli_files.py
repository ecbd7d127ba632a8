"""Every file a node command's flag names (``fabric serve``, ``fabric
status``), as a real process: a file it cannot use is one line on stderr,
``--flag PATH: what is wrong``, exit status 2, no traceback, and a refused
``fabric serve`` starts nothing (its cassette is not made)."""

import json

import pytest

import node_ops
from certs import make_certs
from fabric import NoHolderError
from fabric.node import connect
from served import read_until, serve, stop
from test_cli import one_line_error, run

GARBAGE = b"garbage \xff\n"  # not UTF-8, not JSON, not PEM

# flag -> [(a file's content, what the line says of it)]: garbage, then
# UTF-8 text that is not what the flag wants
SERVE_FILES = {
    "--tokens": [(GARBAGE, "the tokens file is not UTF-8 text"),
                 ("{not json", "the tokens file is not valid JSON"),
                 ('{"alice": 7}', "a tokens file is a JSON object of principal")],
    "--grants": [(GARBAGE, "the grants file is not UTF-8 text"),
                 ("{not json", "the grants file is not valid JSON"),
                 ("[1]", "a grants file is a JSON object of principal")],
    "--secrets": [(GARBAGE, "the secrets file is not UTF-8 text"),
                  ("{not json", "the secrets file is not valid JSON"),
                  ('{"a": 1}', "a secrets file is a JSON object of name -> str")],
    "--peer-lists": [(GARBAGE, "the peer lists file is not UTF-8 text"),
                     ("{not json", "the peer lists file is not valid JSON"),
                     ('{"allow": [3]}', '"allow" is a list of node ids')],
    "--node-key": [(GARBAGE, "not UTF-8 text"),
                   ("k1 n1\n", "expected one line 'KEY_ID NODE_ID HEX_SEED'")],
    "--trusted-keys": [(GARBAGE, "not UTF-8 text"), ("k1 n1 zz\n", "line 1: ")],
    "--fleet-keys": [(GARBAGE, "not UTF-8 text"),
                     ("k1\n", "line 1: expected 'KEY_ID HEX_SECRET'")],
    "--peer-token-file": [(GARBAGE, "not UTF-8 text"),
                          (" \n\t\n", "holds no token (it is empty)")],
    "--tls-ca": [(GARBAGE, "holds no PEM certificate (X509: no certificate or crl found)"),
                 ("", "holds no PEM certificate")],
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def serve_refused(tmp_path, *args):
    """``fabric serve ARGS`` is refused in one line; returns the line."""
    cassette = tmp_path / "refused.ledger"
    line = one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(cassette),
                              *args), "fabric serve: error: ")
    assert not cassette.exists()  # refused before anything started
    return line


@pytest.mark.parametrize("flag", sorted(SERVE_FILES))
def test_serve_names_the_flag_of_a_file_it_cannot_use(tmp_path, flag):
    missing = tmp_path / "nonexistent"
    assert serve_refused(tmp_path, flag, str(missing)).endswith(
        f"error: {flag} {missing}: cannot read it: No such file or directory")
    assert f"error: {flag} {tmp_path}: cannot read it: Is a directory" in \
        serve_refused(tmp_path, flag, str(tmp_path))
    bad = tmp_path / "bad"
    for content, says in SERVE_FILES[flag]:
        (bad.write_bytes if isinstance(content, bytes) else bad.write_text)(content)
        assert f"error: {flag} {bad}: {says}" in serve_refused(tmp_path, flag, str(bad))


def test_serve_names_the_tls_cert_or_the_tls_key(tmp_path, certs):
    cert, key = str(certs / "server.pem"), str(certs / "server.key")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(GARBAGE)
    missing = str(tmp_path / "nonexistent")
    assert serve_refused(tmp_path, "--tls-cert", missing, "--tls-key", key).endswith(
        f"--tls-cert {missing}: cannot read it: No such file or directory")
    assert serve_refused(tmp_path, "--tls-cert", cert, "--tls-key", missing).endswith(
        f"--tls-key {missing}: cannot read it: No such file or directory")
    assert f"--tls-cert {garbage}: holds no PEM certificate (X509: " in serve_refused(
        tmp_path, "--tls-cert", str(garbage), "--tls-key", key)
    assert f"--tls-cert {key}: holds no PEM certificate" in serve_refused(
        tmp_path, "--tls-cert", key, "--tls-key", key)  # a key where the certificate goes
    assert serve_refused(tmp_path, "--tls-cert", cert, "--tls-key", str(garbage)).endswith(
        f"--tls-key {garbage}: not a PEM private key of the --tls-cert {cert} certificate")
    assert serve_refused(tmp_path, "--tls-cert", cert, "--tls-key",
                         str(certs / "alice.key")).endswith(
        f"--tls-key {certs / 'alice.key'}: not a PEM private key of the --tls-cert {cert} "
        f"certificate (X509: key values mismatch)")
    assert serve_refused(tmp_path, "--tls-cert", cert).endswith(
        "--tls-cert and --tls-key go together")


def test_serve_names_a_cassette_it_cannot_open(tmp_path):
    nowhere = tmp_path / "no-such-folder" / "c.ledger"
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(nowhere)),
                   f"fabric serve: error: --cassette {nowhere}: creating the ledger: "
                   f"No such file or directory")
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(tmp_path)),
                   f"fabric serve: error: --cassette {tmp_path}: opening the ledger for "
                   f"writing: Is a directory")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(GARBAGE * 100)
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(garbage)),
                   f"fabric serve: error: --cassette {garbage}: not a cassette ledger")
    assert garbage.read_bytes() == GARBAGE * 100  # left as it was


@pytest.mark.parametrize("flag", ["--token-file", "--tls-ca"])
def test_status_names_the_flag_of_a_file_it_cannot_use(tmp_path, flag):
    # (the node's address is never dialled: the flags are read first)
    url = "fabric://127.0.0.1:1"
    missing = tmp_path / "nonexistent"
    one_line_error(run("status", url, flag, str(missing)),
                   f"fabric status: error: {flag} {missing}: cannot read it: "
                   f"No such file or directory")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(GARBAGE)
    one_line_error(run("status", url, flag, str(garbage)),
                   f"fabric status: error: {flag} {garbage}: ",
                   "not UTF-8 text" if flag == "--token-file" else "holds no PEM certificate")
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    one_line_error(run("status", url, flag, str(empty)),
                   f"fabric status: error: {flag} {empty}: ",
                   "holds no token" if flag == "--token-file" else "holds no PEM certificate")


def test_a_token_and_its_file_together_are_refused(tmp_path):
    tf = tmp_path / "token"
    tf.write_text("a-token-0123456789abcdef\n")
    assert serve_refused(tmp_path, "--peer-token", "x", "--peer-token-file", str(tf)).endswith(
        "error: --peer-token and --peer-token-file are the same token: give one "
        "(--peer-token-file keeps it out of ps)")
    one_line_error(run("status", "fabric://127.0.0.1:1", "--token", "x", "--token-file",
                       str(tf)),
                   "fabric status: error: --token and --token-file are the same token: "
                   "give one")


def test_status_names_the_tls_cert_or_the_tls_key(tmp_path, certs):
    url = "fabrics://127.0.0.1:1"
    cert, key = str(certs / "alice.pem"), str(certs / "alice.key")
    missing = str(tmp_path / "nonexistent")
    one_line_error(run("status", url, "--tls-cert", missing, "--tls-key", key),
                   f"fabric status: error: --tls-cert {missing}: cannot read it")
    one_line_error(run("status", url, "--tls-cert", cert, "--tls-key", missing),
                   f"fabric status: error: --tls-key {missing}: cannot read it")
    one_line_error(run("status", url, "--tls-cert", cert, "--tls-key",
                       str(certs / "server.key")),
                   f"fabric status: error: --tls-key {certs / 'server.key'}: not a PEM "
                   f"private key of the --tls-cert {cert} certificate (X509: key values "
                   f"mismatch)")
    one_line_error(run("status", url, "--tls-key", key),
                   "fabric status: error: --tls-cert and --tls-key go together")


def test_serve_presents_the_peer_token_of_its_file(tmp_path):
    """Node b links to node a, which takes only tokens, with the token of
    its ``--peer-token-file`` (surrounded by whitespace): a answers its
    link and b gets a's holdings through it. With a file holding another
    token, a refuses the link and b gets nothing."""
    peer_token = "peer-token-0123456789abcdef"
    (tmp_path / "tokens.json").write_text(json.dumps({"peer": peer_token,
                                                      "alice": "alice-token-0123456789ab"}))
    (tmp_path / "peer-token").write_text(f"\n  {peer_token}\t\n")
    (tmp_path / "wrong-token").write_text("wrong-token-fedcba987654321\n")
    procs = []
    try:
        pa, a_url = serve(tmp_path, "a", "--tokens", str(tmp_path / "tokens.json"),
                          "--home", "node_ops:home")
        procs.append(pa)
        req = node_ops.double.request(21)
        with connect(a_url, token="alice-token-0123456789ab") as c:
            assert c.evaluate(req).value == 42  # a holds it now
        pb, b_url = serve(tmp_path, "b", "--peer", a_url, "--log-level", "info",
                          "--peer-token-file", str(tmp_path / "peer-token"))
        procs.append(pb)
        read_until(pb, f"node b: peer {a_url} is a")  # a answered b's link
        with connect(b_url) as b:
            assert b.evaluate(req).value == 42  # from a, through the link
        with connect(b_url, scope="held") as b:
            assert b.evaluate(req).value == 42  # b recorded it
        pc, c_url = serve(tmp_path, "c", "--peer", a_url, "--log-level", "info",
                          "--peer-token-file", str(tmp_path / "wrong-token"))
        procs.append(pc)
        read_until(pc, f"node c: peer {a_url} refused: {a_url}: the bearer token was refused")
        with connect(c_url) as c:
            with pytest.raises(NoHolderError, match="no holder answered"):
                c.evaluate(req)
    finally:
        for p in procs:
            stop(p)
