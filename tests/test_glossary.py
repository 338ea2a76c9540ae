"""One shape-letter legend across the models: every model file's "Shape names" entries equal the
package glossary (jaxmodels/models/__init__.py) word for word, and every shape suffix the file's
code uses (`x_BxTxD`) is spelled from letters its own legend lists. A file that names no shapes
(models/interface.py) needs no legend; one that does, does."""

import pathlib
import re

import pytest

import jaxmodels

ROOT = pathlib.Path(jaxmodels.__file__).parent
FILES = sorted(p for p in (ROOT / "models").glob("*.py") if p.name != "__init__.py") + [ROOT / "generate.py"]
# A name, an underscore, then dimensions joined by "x": each an upper-case letter with an optional
# lower-case one (Dh, Hi, Wi) or a literal size.
SUFFIX = re.compile(r"\b[a-z][a-z0-9]*_((?:[A-Z][a-wyz]?|\d+)(?:x(?:[A-Z][a-wyz]?|\d+))*)\b")


def legend(text: str) -> dict[str, str] | None:
    """{letter: meaning} of the first "Shape names...:" paragraph (entries split by ";", up to
    the full stop that ends a line), or None without one."""
    m = re.search(r"Shape names[^:]*:(.*?)\.\s*?\n", text, re.S)
    if m is None:
        return None
    entries = [" ".join(e.split()) for e in m.group(1).split(";")]
    out = {}
    for entry in entries:
        letter, _, meaning = entry.partition(" ")
        assert letter not in out, f"{letter} listed twice"
        out[letter] = meaning
    return out


GLOSSARY = legend((ROOT / "models" / "__init__.py").read_text())
assert GLOSSARY, "jaxmodels/models/__init__.py has no 'Shape names:' glossary"


def test_the_glossary_gives_each_letter_one_meaning():
    assert {"B", "T", "S", "D", "H", "G", "K", "V", "F", "Dh"} <= set(GLOSSARY)
    assert GLOSSARY["K"] == "classes" and GLOSSARY["G"].startswith("key/value heads")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_model_file_states_the_package_legend(path):
    text = path.read_text()
    used = {d for m in SUFFIX.finditer(text) for d in m.group(1).split("x") if not d.isdigit()}
    local = legend(text)
    if local is None:
        assert not used, f"{path.name} uses shape suffixes ({sorted(used)}) but has no 'Shape names:' legend"
        return
    for letter, meaning in local.items():
        assert letter in GLOSSARY, f"{path.name}: {letter!r} is not in the package glossary"
        assert meaning == GLOSSARY[letter], (f"{path.name}: {letter} means {meaning!r} here but "
                                             f"{GLOSSARY[letter]!r} in jaxmodels/models/__init__.py")
    missing = used - set(local)
    assert not missing, f"{path.name} uses shape letters {sorted(missing)} its legend does not list"


def test_a_disagreeing_legend_is_caught():
    # The check itself can fail: K for key/value heads, the old attention.py convention.
    bad = '"""x.\n\nShape names: B batch; K key/value heads.\n"""\nk_BxK = 0\n'
    assert legend(bad)["K"] != GLOSSARY["K"]
    assert legend('"""No legend."""\nx_BxT = 0\n') is None
