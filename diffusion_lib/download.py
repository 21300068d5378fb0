"""One file over HTTP(S): a timeout, a progress bar, an atomic write and a sha256 check; and the same
timeout around third-party downloaders (:func:`socket_timeout`).

:func:`fetch` streams ``url`` into a temporary file beside the target (``checkpoint.atomic_write``),
hashing as it goes, and renames it into place only when the sha256 is the expected one: a broken
connection or a wrong file never becomes the target, and the wrong file is deleted. :func:`verify`
checks a file already on disk; both remember the digest of a verified file by (size, mtime), so a
file that has not changed is not hashed again in the same process.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import atomic_write, file_digest

#: Seconds urllib waits for the connection, and then for each read (the status line included):
#: a server that accepts the connection and never answers fails after this long.
TIMEOUT_S = 20.0
OFFLINE_ENV = "DIFFUSION_OFFLINE"  # set (to anything) to never download; as in diffusion_lib.data

_BLOCK = 1 << 16
_DIGESTS: dict[str, tuple[int, int, str]] = {}  # resolved path -> (size, mtime_ns, sha256)


@contextlib.contextmanager
def socket_timeout(seconds: float | None = None):
    """Within the block, sockets opened without a timeout of their own (torch.hub's and torchvision's
    downloads) give up after ``seconds`` (default :data:`TIMEOUT_S`) on a connection or a read.

    The setting is process-wide while the block runs, so it also bounds other threads' new sockets.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S if seconds is None else seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class DownloadError(OSError):
    """A download that failed (no network, refused, timed out, HTTP error); the message names the URL."""


class ChecksumError(ValueError):
    """A file whose sha256 is not the expected one; the message names the file and both hashes."""


def _remember(path: Path, sha256: str) -> None:
    st = path.stat()
    _DIGESTS[str(path.resolve())] = (st.st_size, st.st_mtime_ns, sha256)


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file, hashed again only when its size or mtime changed since the last call."""
    path = Path(path)
    st = path.stat()
    size, mtime_ns, digest = _DIGESTS.get(str(path.resolve()), (None, None, None))
    if (size, mtime_ns) != (st.st_size, st.st_mtime_ns):
        digest = file_digest(path)
        _remember(path, digest)
    return digest


def verify(path: str | Path, sha256: str, *, hint: str = "") -> Path:
    """Return ``path`` if its sha256 is ``sha256``; else raise :class:`ChecksumError` (``hint`` is
    appended to the message: what the reader can do about it)."""
    path = Path(path)
    actual = sha256_of(path)
    if actual != sha256:
        raise ChecksumError(f"{path} has sha256 {actual}, expected {sha256}" + (f": {hint}" if hint else ""))
    return path


def fetch(url: str, path: str | Path, *, sha256: str, size: int | None = None, timeout: float | None = None,
          progress: bool = True) -> Path:
    """Download ``url`` to ``path`` (folders created) and return ``path``.

    ``sha256``: the file's expected digest; on a mismatch nothing is written and :class:`ChecksumError`
    names the URL and both hashes. ``size``: the expected byte count (the progress bar's total; a
    longer answer is cut off and refused). ``timeout``: seconds for the connection and for each
    read (default :data:`TIMEOUT_S`). Raises :class:`DownloadError` when the file cannot be fetched,
    without trying when ``$DIFFUSION_OFFLINE`` is set.
    """
    path = Path(path)
    timeout = TIMEOUT_S if timeout is None else timeout
    if os.environ.get(OFFLINE_ENV):
        raise DownloadError(f"{url}: not fetched, ${OFFLINE_ENV} is set")
    request = urllib.request.Request(url, headers={"User-Agent": "diffusion_lib"})

    def stream(response, out) -> None:  # raising here deletes the temporary file
        total = size if size is not None else int(response.headers.get("Content-Length") or 0) or None
        digest, received = hashlib.sha256(), 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name,
                  disable=not progress) as bar:
            while block := response.read(_BLOCK):
                received += len(block)
                if size is not None and received > size:
                    raise ChecksumError(f"{url} is longer than the expected {size} bytes; not kept")
                digest.update(block)
                out.write(block)
                bar.update(len(block))
        if digest.hexdigest() != sha256:
            raise ChecksumError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                                f"the download was deleted, {path} was not written")

    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            atomic_write(path, lambda out: stream(response, out))
    except ChecksumError:
        raise
    except TimeoutError as e:
        raise DownloadError(f"{url}: no answer within {timeout:g} s ({e})") from e
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:  # .reason is the useful part: the resolver's or socket's error
        reason = e.reason
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout:g} s ({reason})"
        raise DownloadError(f"{url}: {reason}") from e
    except (OSError, http.client.HTTPException) as e:  # reset connection, truncated answer, ...
        raise DownloadError(f"{url}: {type(e).__name__}: {e}") from e
    _remember(path, sha256)
    return path
