"""The public API is typed: ``mypy --strict`` over a typed example.

``tests/typed/example_typed.py`` must pass ``mypy --strict`` with every
``reveal_type`` giving the type written on its line;
``tests/typed/example_rejected.py`` must fail exactly on its lines marked
``# E``. mypy reads the package as a user's mypy would (imports followed
silently: the package's own strictness is ``python -m mypy fabric``).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

HERE = Path(__file__).parent / "typed"
ROOT = Path(__file__).parent.parent


def mypy(path: Path) -> tuple[int, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MYPYPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--no-incremental", "--config-file", os.devnull, str(path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return proc.returncode, proc.stdout.splitlines()


def test_typed_example_passes_strict_with_the_stated_types():
    rc, out = mypy(HERE / "example_typed.py")
    revealed = {}
    for line in out:
        m = re.match(r".*example_typed\.py:(\d+): note: Revealed type is \"(.*)\"$", line)
        if m:
            revealed[int(m.group(1))] = m.group(2)
    assert rc == 0, "\n".join(out)
    expected = {}
    for n, text in enumerate((HERE / "example_typed.py").read_text().splitlines(), 1):
        if "reveal_type(" in text:
            expected[n] = text.split("# ", 1)[1].strip()
    assert len(expected) >= 15
    assert revealed == expected


def test_mypy_rejects_wrong_calls_exactly_where_marked():
    rc, out = mypy(HERE / "example_rejected.py")
    assert rc == 1, "\n".join(out)
    errors = {int(m.group(1)) for line in out
              if (m := re.match(r".*example_rejected\.py:(\d+): error:", line))}
    marked = {n for n, text in enumerate((HERE / "example_rejected.py").read_text()
                                         .splitlines(), 1) if text.endswith("# E")}
    assert len(marked) == 7
    assert errors == marked
