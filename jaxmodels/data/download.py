"""Checksum-verified downloads with the standard library only.

A download lands in a temporary file next to its destination and is renamed into place only
after its digest matches, so an interrupted or corrupt transfer never leaves a file that a later
run would mistake for good data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

from jaxmodels.errors import DataError

_CHUNK_BYTES = 1 << 20
_ALGORITHMS = ("sha256", "md5")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Splits "sha256:<hex>" (or "md5:<hex>") into (algorithm, lower-case hex digest)."""
    algorithm, sep, digest = checksum.partition(":")
    algorithm = algorithm.strip().lower()
    digest = digest.strip().lower()
    expected_len = {"sha256": 64, "md5": 32}.get(algorithm)
    if (not sep or expected_len is None or len(digest) != expected_len
        or any(c not in "0123456789abcdef" for c in digest)):
        raise ValueError(
            "checksum must look like 'sha256:<64 hex digits>' or 'md5:<32 hex digits>', "
            f"got {checksum!r}")
    return algorithm, digest


def file_digest(path: pathlib.Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks so large files do not sit in memory twice."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: pathlib.Path | str, checksum: str, *, timeout: float = 60.0,
          progress: bool = True, offline_hint: str | None = None) -> pathlib.Path:
    """Downloads `url` to `dest` unless `dest` already holds a file with this checksum.

    Args:
      url: what to download (http, https or file URL).
      dest: the final path; its folder is created when missing.
      checksum: "sha256:<hex>" or "md5:<hex>" of the expected file.
      timeout: seconds to wait for the server on connect and on each read.
      progress: show a tqdm bar on stderr when the server states the size.
      offline_hint: how to get the data without this download; added to the message when the
        network fails. By default the message says to copy the file to `dest` by hand.

    Returns:
      `dest` as a Path, holding a file whose digest equals `checksum`.

    Raises:
      DataError: the server could not be reached, answered with an error, or sent a file with
        another digest. No file is left at `dest` (nor a temporary one) in any of these cases.
    """
    algorithm, expected = parse_checksum(checksum)
    dest = pathlib.Path(dest)
    if dest.is_file() and file_digest(dest, algorithm) == expected:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DataError(f"Cannot write to {dest.parent} ({e.strerror or e}): make it writable "
                        "or point XDG_CACHE_HOME at a writable folder.") from e
    tmp = pathlib.Path(tmp_name)
    hint = offline_hint or f"download {url} on another machine and copy it to {dest}"
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, algorithm, timeout=timeout, progress=progress,
                             label=dest.name, hint=hint)
        if actual != expected:
            raise DataError(
                f"Checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; the "
                "mirror may be corrupt or changed, so nothing was saved: try again later or use "
                "another mirror.")
        os.replace(tmp, dest)
    finally:
        # Reached with the temporary file still there only on failure (or Ctrl-C).
        tmp.unlink(missing_ok=True)
    return dest


def _stream(url, out, algorithm, *, timeout, progress, label, hint) -> str:
    """Copies the body of `url` into the open file `out`; returns the body's hex digest."""
    h = hashlib.new(algorithm)
    offline = ("this machine may be offline or the server unreachable; to install without the "
               f"network, {hint}")
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DataError(f"Download of {url} failed with HTTP {e.code} {e.reason}: check the URL "
                        f"or mirror, or {hint}.") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"Could not download {url} ({reason}); {offline}.") from e
    with resp:
        total = resp.headers.get("Content-Length")
        bar = None
        if progress and total and total.isdigit():
            from tqdm import tqdm  # Only needed when a bar is shown.
            bar = tqdm(total=int(total), unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                       leave=False)
        try:
            while True:
                try:
                    chunk = resp.read(_CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as e:
                    raise DataError(f"Download of {url} broke off ({e!r}); {offline}.") from e
                if not chunk:
                    break
                h.update(chunk)
                try:
                    out.write(chunk)
                except OSError as e:
                    raise DataError(f"Cannot write the download of {url} ({e.strerror or e}): "
                                    "free some disk space or choose another folder.") from e
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    return h.hexdigest()
