"""``import fabric`` when the Fabric SSH tool's files were installed into the
same folder: a clear ImportError that says what happened and how to fix it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import fabric


def _import_from(site: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=site)
    return subprocess.run([sys.executable, "-c", "import fabric; print(fabric.__file__)"],
                          capture_output=True, text=True, env=env, cwd=site, timeout=60)


def test_ssh_tool_files_beside_ours_are_named(tmp_path):
    site = tmp_path / "site"
    pkg = site / "fabric"
    shutil.copytree(os.path.dirname(fabric.__file__), pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = _import_from(str(site))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(pkg / "__init__.py")
    # What `pip install fabric` adds to the same folder.
    (pkg / "connection.py").write_text("class Connection: pass\n")
    proc = _import_from(str(site))
    assert proc.returncode == 1
    assert "ImportError: the package folder" in proc.stderr
    assert "Fabric SSH tool" in proc.stderr and "pip uninstall fabric stream-fabric" in proc.stderr
