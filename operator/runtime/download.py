"""A model file by https:// (or http://) for `bakeline run`: fetched once into a cache keyed by
its sha256, resumed with a Range request where a connection dropped, bounded in size, and kept
only when its bytes are the job's sha256. Nothing here opens the bytes: the import stage vets
them as it vets any local file, in a process that holds none of the user's credentials."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import urllib3

from bakeline.checkpoints.manifest import sha256_file

MAX_BYTES = 16 << 30  # as the vetting's bound on a model archive inflated
ATTEMPTS = 5
_CHUNK = 1 << 16  # a cut connection loses at most the chunk being read
# Worth another try: the server may answer later (a timeout, a limit, a restart).
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(ValueError):
    """The file could not be fetched as the job names it; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("BAKELINE_CACHE") or Path.home() / ".cache" / "bakeline"
    return Path(root) / "downloads"


def is_remote(address: str) -> bool:
    return urlparse(address).scheme in ("https", "http")


def fetch(
    url: str,
    sha256: str | None,
    *,
    cache: Path | None = None,
    max_bytes: int = MAX_BYTES,
    attempts: int = ATTEMPTS,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Path, str]:
    """The file at `url` whose bytes have `sha256`, as a local path (`<cache>/<sha256>/<name>`:
    the url's own file name, for the model card), and that sha256, hashed once here. A cached
    copy with those bytes is used as it is; a partial one is resumed. With no `sha256` (a
    dataset names none) the file is fetched afresh and kept under the sha256 it turns out to
    have. Raises DownloadError: refused (4xx, too large, other bytes) at once, transient
    failures after `attempts` tries with doubling pauses."""
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise DownloadError(f"{url} is not an https:// or http:// url with a host")
    name = PurePosixPath(unquote(parsed.path)).name or "model"
    root = cache or cache_dir()
    if sha256 is not None:
        folder = root / sha256
        if (folder / name).is_file() and sha256_file(folder / name) == sha256:
            return folder / name, sha256
    else:  # nothing to check a partial file against: start from the first byte
        folder = root / "pending" / hashlib.sha256(url.encode()).hexdigest()[:16]
        (folder / f".{name}.part").unlink(missing_ok=True)
    partial = folder / f".{name}.part"
    folder.mkdir(parents=True, exist_ok=True)
    http = urllib3.PoolManager(
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        timeout=urllib3.Timeout(connect=15, read=60),
    )
    why = "no attempt made"
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            if _get(http, url, partial, max_bytes):
                break
            why = "the connection ended before the file did"
        except urllib3.exceptions.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
    else:
        raise DownloadError(f"could not download {url} in {attempts} attempts: {why}")
    actual = sha256_file(partial)
    if sha256 is not None and actual != sha256:
        partial.unlink()
        raise DownloadError(
            f"{url} has sha256 {actual}, but the job names {sha256}: the file was not kept"
        )
    target = root / actual / name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(target)
    return target, actual


def _get(http: urllib3.PoolManager, url: str, partial: Path, max_bytes: int) -> bool:
    """One request, appending to `partial` from where it ends; True when the file is whole."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = http.request("GET", url, headers=headers, preload_content=False)
    try:
        if response.status == 416 and have:  # nothing left past what we hold: it is whole
            return True
        if response.status in _TRANSIENT:
            raise urllib3.exceptions.HTTPError(f"HTTP {response.status} from {url}")
        if response.status not in (200, 206):
            raise DownloadError(f"{url} answered HTTP {response.status}: not downloaded")
        if response.status == 200:  # the server sends it whole (no Range): start over
            have = 0
        length = response.headers.get("Content-Length")
        if length is not None and have + int(length) > max_bytes:
            raise DownloadError(f"{url} is {have + int(length)} bytes; the limit is {max_bytes}")
        with partial.open("r+b" if have else "wb") as sink:
            sink.seek(have)
            sink.truncate()
            for chunk in response.stream(_CHUNK):
                have += len(chunk)
                if have > max_bytes:
                    raise DownloadError(f"{url} is larger than the limit of {max_bytes} bytes")
                sink.write(chunk)
        return True  # a cut connection raises instead (urllib3 checks Content-Length)
    except urllib3.exceptions.ProtocolError:
        return False  # cut short (urllib3 checks Content-Length): resume from what arrived
    finally:
        response.release_conn()
