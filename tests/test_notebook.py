"""The tutorial notebook (docs/tutorial.ipynb) runs top to bottom on a real
kernel (nbclient driving an ipykernel), and says what it claims to show."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).parent.parent
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _text(output):
    if output.get("output_type") == "stream":
        return output["text"]
    data = output.get("data", {})
    return data.get("text/html", "") + data.get("text/plain", "")


def test_tutorial_executes_on_a_real_kernel(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel imports this checkout's fabric, as the tests do.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = ["".join(_text(o) for o in c.outputs) for c in code]
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert errors == []
    everything = "\n".join(outputs)
    assert "144 home" in everything  # record
    assert "144 local" in everything  # hit
    assert "peer:a\nlocal" in everything  # peer, then held
    assert "['content', 'addressed', 'replies']" in everything  # stream
    assert "<b>EvalRequest</b>" in everything and "<b>EvalCassette</b>" in everything
    assert str([x * x for x in range(20)]) in everything  # map
    assert "TypeError" in everything  # map's error in its item's place
    assert "not-shown-anywhere" not in everything  # outputs only, not the source
    assert "Secret(&#x27;***&#x27;)" in everything
