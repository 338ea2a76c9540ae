"""A step that cannot fit is one line before any batch is built or anything compiled."""

import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_batch_too_large_for_memory_is_one_line_before_anything(tmp_path):
    command = [sys.executable, "-m", "jaxmodels.cli", "train", str(ROOT / "experiments/configs/mlp_mnist.py"),
               "--tiny", "data.dataset=digits", "train.steps=2", "data.batch_size=10000000",
               "--workdir", str(tmp_path / "w")]
    # 6 GiB of address space (ulimit -v, in KiB): the budget the check must read; JAX itself
    # runs within it. Set by the shell, not a preexec_fn (forking a threaded test process).
    out = subprocess.run(["bash", "-c", f"ulimit -v {6 << 20} && exec {shlex.join(command)}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "over the 6.00 GiB of the address-space limit" in line
    assert "data.batch_size" in line  # the knob
    assert not (tmp_path / "w").exists()  # nothing was created
