"""Test-wide JAX settings, applied before any backend starts.

Eight simulated CPU devices on every run (the multi-device code paths are tested with them), and
strict rank promotion so an accidental broadcast between mismatched ranks fails loudly.
"""

import functools
import http.server
import os
import tempfile
import threading

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
# The CPU matmul probe behind MFU caches its measurement; tests (and the processes they start)
# keep it in a folder of their own rather than the user's ~/.cache.
os.environ.setdefault("JAXMODELS_CACHE_DIR", tempfile.mkdtemp(prefix="jaxmodels_cache_"))
# One persistent XLA compilation cache for the whole session: this process, the xdist workers
# (they inherit the environment set here) and every subprocess a test starts. Many tests compile
# the same tiny programs; with the cache the second compile is a file read (about a fifth of
# the suite's CPU time on 2 cores). Tests of the cache itself point their runs at a folder of
# their own.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxmodels_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _late_flags_notice_said():
    """CLI and `fit` calls made in-process come after JAX started here, so the first of them in
    each worker would print runtime's once-per-process "XLA CPU flags are not applied" notice
    before its own output, and a one-line-error assertion would pass or fail by test order. Mark
    the notice as said before every test (tests/test_xla_flags.py checks the notice itself)."""
    import contextlib
    import io

    from jaxmodels import runtime

    with contextlib.redirect_stderr(io.StringIO()):
        runtime._say_once(runtime.late_flags_notice())
    yield


@pytest.fixture(scope="session")
def mnist():
    from jaxmodels import data

    return data.load_image_dataset("mnist")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL) of a threading HTTP server on 127.0.0.1 (port 0) serving that folder:
    the download tests' stand-in for a dataset's canonical host. Shut down after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
