"""The README's Python examples run as written (in a temporary directory)."""

import os
import re
import pathlib

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    source = "\n".join(blocks).replace("/tmp/", str(tmp_path) + os.sep)
    namespace = {"__name__": "readme"}
    exec(compile(source, str(README), "exec"), namespace)
    assert namespace["b"].evaluate(namespace["embed"].request("some text")).source == "local"
