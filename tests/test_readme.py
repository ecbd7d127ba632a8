"""The README's Python examples run as written (in a temporary directory),
and its "Run a fleet" section as written: its three `fabric serve` commands
as processes on loopback (on free ports) and its client against them."""

import contextlib
import io
import os
import re
import pathlib
import shlex
import sys

import fabric
from conftest import free_port
from served import popen, stop

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MODULE = "# myops.py\n"  # the first line of the fleet's module of ops
CLIENT = "# a client of the fleet above\n"  # the first line of its client


def python_blocks(text=None):
    return re.findall(r"```python\n(.*?)```", README.read_text() if text is None else text,
                      re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = [b for b in python_blocks() if not b.startswith(CLIENT)]  # (needs the fleet)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    source = "\n".join(blocks).replace("/tmp/", str(tmp_path) + os.sep)
    namespace = {"__name__": "readme"}
    exec(compile(source, str(README), "exec"), namespace)
    assert namespace["b"].evaluate(namespace["embed"].request("some text")).source == "local"


def test_readme_fleet_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    start = text.index("## Run a fleet")
    section = text[start:text.index("\n## ", start + 1)]
    blocks = python_blocks(section)
    module = next(b for b in blocks if b.startswith(MODULE))
    client = next(b for b in blocks if b.startswith(CLIENT))
    commands = re.search(r"```sh\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(commands) == 3 and all(c.startswith("fabric serve ") for c in commands)
    listen = [re.search(r"--listen 127\.0\.0\.1:(\d+)", c).group(1) for c in commands]
    ports = {p: str(free_port()) for p in listen}  # each node's, wherever it is named

    def local(s):
        return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[m.group(1)]}", s)

    (tmp_path / "myops.py").write_text(module)
    # run where myops.py is, as the README says: `python -m` puts the working
    # directory first on the nodes' path, syspath_prepend on the client's
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    procs = []
    try:
        for command in commands:  # in order: c, then b (home c), then a (home b, peer c)
            argv = shlex.split(local(command))
            proc = popen([sys.executable, "-m", "fabric"] + argv[1:])
            procs.append(proc)
            line = proc.stdout.readline()
            assert "listening on" in line, (command, line, proc.stderr.read()[-2000:]
                                            if proc.poll() is not None else "")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(local(client), str(README), "exec"), {"__name__": "readme_fleet"})
        assert out.getvalue().split() == ["49", "home", "peer:a"]
        square = sys.modules["myops"].square
        for port in ports.values():  # each node on the way recorded it: held there now
            with fabric.connect(f"fabric://127.0.0.1:{port}", scope="held", timeout=10) as cl:
                assert cl.evaluate(square.request(7)).value == 49
    finally:
        for proc in reversed(procs):
            stop(proc)
        sys.modules.pop("myops", None)
