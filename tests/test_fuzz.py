"""Property-based fuzzing of the input boundary.

1. Random override lists over every config key (of three configs: the default CNN, the tiny
   MLP, the tiny GPT) and random values of every type, parsed in-process by
   `config.apply_overrides`: the only exception that may come out is ConfigError, and a config
   that comes out survives its JSON round trip with the same hash (what config.json, resume and
   the results table rely on). FUZZ_EXAMPLES examples.
2. Random argument vectors through `python -m jaxmodels.cli` (train / eval / plan, random flags
   and overrides, train.steps tiny): never a traceback, exit 0, 2 or 3, and nothing written on
   exit 2. CLI_EXAMPLES examples (each a process that starts JAX, hence few).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxmodels import config as C
from jaxmodels.accounting import results
from jaxmodels.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = str(ROOT / "experiments/configs/mlp_mnist.py")
GPT = str(ROOT / "experiments/configs/gpt_shakespeare.py")
FUZZ_EXAMPLES = 400
CLI_EXAMPLES = 6  # each is a fresh process (~3 s): the in-process fuzz above is the broad one

BASES = [C.Config(name="default"), C.load(MLP, tiny=True), C.load(GPT, tiny=True)]


def _keys(config: C.Config) -> list[str]:
    out = []

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out.append(prefix + k)

    walk("", C.to_dict(config))
    return out


KEYS = sorted({k for c in BASES for k in _keys(c)})
# Near misses and nonsense keys too: the parser must name them, not crash.
ODD_KEYS = ["model", "train", "train.", ".steps", "train.steps.x", "nosuch.key", "train.step",
            "MODEL.KIND", "", " train.steps ", "data..batch_size"]

_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 1e-12]))
_ints = st.one_of(st.integers(-5, 70), st.integers(-2 ** 70, 2 ** 70))
_words = st.one_of(st.sampled_from(["none", "None", "null", "true", "false", "True", "nan", "inf",
                                    "-inf", "()", "(,)", "[]", "(1,", "1e999", "0x10", "1_000",
                                    "adamw", "digits", "text", "fsdp", "=", "a=b", "'", '"', "\\",
                                    "é", "\x00", " ", ""]),
                  st.text(max_size=12))


def _scalar_text():
    return st.one_of(_ints.map(str), _floats.map(repr), _floats.map(str),
                     st.booleans().map(lambda b: str(b).lower()), _words)


def _tuple_text():
    return st.lists(st.one_of(_ints.map(str), _floats.map(repr), _words.filter(lambda w: "," not in w)),
                    max_size=4).map(lambda parts: "(" + ",".join(parts) + ("," if len(parts) == 1 else "") + ")")


_values = st.one_of(_scalar_text(), _tuple_text())


def _flat(config: C.Config) -> dict:
    out = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[prefix + k] = v

    walk("", C.to_dict(config))
    return out


DEFAULTS = {k: v for c in reversed(BASES) for k, v in _flat(c).items()}  # MLP's where shared


def _plausible(key: str):
    """Values of the key's own type near its default, so that many override lists are valid
    and the validation of whole configs (not only the parsing of one value) is exercised."""
    v = DEFAULTS.get(key)
    if isinstance(v, bool):
        return st.booleans().map(lambda b: str(b).lower())
    if isinstance(v, int):
        return st.integers(1, 2 * max(abs(v), 4)).map(str)
    if isinstance(v, float):
        return st.floats(1e-6, 2 * max(abs(v), 1.0)).map(repr)
    if isinstance(v, (list, tuple)):
        return st.lists(st.integers(1, 16), min_size=0, max_size=3).map(
            lambda xs: "(" + ",".join(map(str, xs)) + ("," if len(xs) == 1 else "") + ")")
    if isinstance(v, str):
        return st.just(v)
    return st.just("none")


def _pairs(base: int):
    own = _keys(BASES[base])
    return st.one_of(
        # Mostly the base's own keys with plausible values (one wild value already makes a list
        # invalid); then any key of any config, and odd keys, with any value.
        st.sampled_from(own).flatmap(lambda k: st.tuples(st.just(k), st.one_of(*[_plausible(k)] * 4, _values))),
        st.tuples(st.sampled_from(KEYS), _values),
        st.tuples(st.sampled_from(ODD_KEYS), _values))


_case = st.sampled_from(range(len(BASES))).flatmap(lambda i: st.tuples(
    st.just(i), st.lists(_pairs(i).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4)))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=_case)
def test_any_override_list_gives_a_config_or_a_config_error(case):
    base, overrides = case
    try:
        config = C.apply_overrides(BASES[base], overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip(), repr(str(e))
        return
    again = C.from_dict(json.loads(C.to_json(config)))
    assert results.config_hash(again) == results.config_hash(config)
    assert dataclasses.replace(again, name=config.name) == again


# ---------------------------------------------------------------------------------------------
# Through the real command line

MLP_KEYS = [k for k in _keys(BASES[1])]
_small_values = st.one_of(st.integers(-2, 9).map(str), st.sampled_from(
    ["nan", "inf", "-1e9", "0.5", "1e-3", "true", "false", "none", "(4,)", "(2,2)", "()", "x",
     "adamw", "sgd", "fsdp", "test", ""]))
_argv = st.tuples(
    st.sampled_from(["train", "eval", "plan"]),
    st.sampled_from([MLP, GPT, "no/such.py", "train.steps=1"]),
    st.lists(st.sampled_from(["--tiny", "--restart", "--no-compile", "--split", "--bogus", "x"]),
             max_size=2, unique=True),
    st.lists(st.tuples(st.sampled_from(MLP_KEYS), _small_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
             max_size=3))


def _snapshot(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # informative


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_fuzz")


@settings(max_examples=CLI_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=_argv)
def test_random_command_lines_answer_without_a_traceback(argv, scratch):
    command, config, flags, overrides = argv
    if "--split" in flags:
        flags = [f for f in flags if f != "--split"] + ["--split", "test"]
    workdir = scratch / "run"
    # Tiny and fast whatever else was drawn: the digits, two steps, nothing periodic.
    args = [command, config, *flags, *overrides, "data.dataset=digits", "train.steps=2",
            "train.eval_every=none", "--workdir", str(workdir)]
    if command == "plan":
        args = [a for a in args if a not in ("--workdir", str(workdir))]
    before = _snapshot(scratch)
    r = subprocess.run([sys.executable, "-m", "jaxmodels.cli", *args], cwd=scratch,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, (args, r.stderr[-3000:])
    assert r.returncode in (0, 2, 3), (args, r.returncode, r.stderr[-2000:])
    if r.returncode == 2:
        assert _snapshot(scratch) == before, args
        last = (r.stderr.strip().splitlines() or [""])[-1]
        assert last.startswith("jaxmodels") and "error: " in last, r.stderr  # ours or argparse's
