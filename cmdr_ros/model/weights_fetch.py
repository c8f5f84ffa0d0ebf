"""Download the paper's pretrained backbones from their official URLs, and identify weights files.

``fetch`` resumes a partial ``FILE.part`` with an HTTP Range request (and restarts when the server ignores
it), keeps the ``.part`` when the transfer stops early, and renames it to ``FILE`` only once it is verified:
against the official SHA-256 where one is published, else by loading it into the project's architecture.
A file that fails verification is deleted. ``check_file`` says which backbone a file is and whether it is
the one the project uses. Identification reuses the loaders of ``cmdr_ros.model.weights``.
"""
from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cmdr_ros import CmdrError, __version__
from cmdr_ros.model.pointmae import PointMAEEncoder
from cmdr_ros.model.weights import (DINO_FILENAME, POINTMAE_FILENAME, POINTMAE_SHA256, create_dino_vitb8,
                                    load_pointmae_weights, sha256_file)

log = logging.getLogger(__name__)
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
POINTMAE_URL = "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class WeightsSpec:
    """One backbone file: where it comes from and how to recognise it.

    ``identify(path)`` raises ``CmdrError`` (saying why) when the file is not this backbone;
    ``sha256`` is the official checksum, ``None`` where none is published."""

    label: str
    filename: str
    url: str
    sha256: str | None
    identify: Callable[[Path], object]


@dataclass(frozen=True)
class FileInfo:
    """A verified file (``fetch``) or a checked one (``check_file``: ``spec`` None when unknown)."""

    path: Path
    size: int
    sha256: str
    spec: WeightsSpec | None = None
    ok: bool = True
    notes: tuple[str, ...] = ()


def _identify_pointmae(path: Path) -> None:
    load_pointmae_weights(PointMAEEncoder(), path, expected_sha256=None)


SPECS: dict[str, WeightsSpec] = {
    "dino": WeightsSpec("DINO ViT-B/8", DINO_FILENAME, DINO_URL, None, create_dino_vitb8),
    "pointmae": WeightsSpec("Point-MAE", POINTMAE_FILENAME, POINTMAE_URL, POINTMAE_SHA256, _identify_pointmae),
}


def _verify(spec: WeightsSpec, path: Path, origin: str) -> str:
    """The file's SHA-256 once it is verified as ``spec``; ``CmdrError`` naming ``origin`` otherwise."""
    sha = sha256_file(path)
    if spec.sha256 is not None and sha != spec.sha256:
        raise CmdrError(f"{origin}: SHA-256 is {sha}, expected {spec.sha256} ({spec.label} {spec.filename})")
    if spec.sha256 is None:
        spec.identify(path)
    return sha


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """GET ``url`` from byte ``offset``; ``None`` on a 416 (nothing after ``offset``: the ``.part`` is whole)."""
    headers = {"User-Agent": f"cmdr_ros/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return None
        raise CmdrError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
        raise CmdrError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None


def _download(url: str, part: Path, timeout: float) -> None:
    """Complete ``part`` from ``url``; on a transfer that stops early raise ``CmdrError`` and keep ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, timeout)
    if resp is None:  # verification decides whether the .part is the whole file
        return
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise CmdrError(f"{url}: asked for bytes from {offset}, got Content-Range "
                                f"{resp.headers.get('Content-Range')!r}")
        elif offset:
            log.info("%s ignored the range request: downloading %s from the start", url, part.name)
            offset = 0
        total = offset + int(length) if length is not None else None
        done = offset
        with open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part"), disable=None) as bar:
            try:
                while block := resp.read(_BLOCK):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise CmdrError(f"download of {url} stopped at {done} bytes ({str(e) or type(e).__name__}); "
                                f"rerun to resume from {part}") from None
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done < total:
        raise CmdrError(f"download of {url} stopped at {done} of {total} bytes; rerun to resume from {part}")


def fetch(spec: WeightsSpec, directory: str | Path, timeout: float = 60.0) -> tuple[FileInfo, bool]:
    """``directory/spec.filename``, downloaded from ``spec.url`` unless a verified copy is there already.

    Returns the stored file and whether it was downloaded now."""
    directory = Path(directory)
    dest = directory / spec.filename
    if dest.is_file():
        try:
            sha = _verify(spec, dest, str(dest))
        except CmdrError as e:
            raise CmdrError(f"{e}; move it away and rerun to download it") from None
        return FileInfo(dest, dest.stat().st_size, sha, spec), False
    directory.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download(spec.url, part, timeout)
    try:
        sha = _verify(spec, part, spec.url)
    except CmdrError as e:
        part.unlink(missing_ok=True)
        raise CmdrError(f"{e}; deleted the download") from None
    os.replace(part, dest)
    return FileInfo(dest, dest.stat().st_size, sha, spec), True


def check_file(path: str | Path, specs: Sequence[WeightsSpec] = tuple(SPECS.values())) -> FileInfo:
    """Which of ``specs`` the file is (its layout), and whether it is that backbone's official file.

    ``ok`` is true for a file of a known layout whose SHA-256 is the official one (or, where none is
    published, that loads into the architecture); ``notes`` say why otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CmdrError(f"{path}: no such file")
    sha, size = sha256_file(path), path.stat().st_size
    reasons = []
    for spec in sorted(specs, key=lambda s: s.sha256 != sha):  # a checksum match is tried first
        try:
            spec.identify(path)
        except CmdrError as e:
            reasons.append(str(e))
            continue
        if spec.sha256 is None:
            note = f"loads as {spec.label}; no official SHA-256 is published"
        elif sha == spec.sha256:
            note = "the official SHA-256"
        else:
            note = f"{spec.label} layout, but not the official file (SHA-256 {spec.sha256})"
        return FileInfo(path, size, sha, spec, spec.sha256 in (None, sha), (note,))
    return FileInfo(path, size, sha, None, False, tuple(reasons))
