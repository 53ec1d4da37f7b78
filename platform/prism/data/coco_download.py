"""The official COCO 2017 archives: download (resumable), MD5 check, extraction, layout check.

``fetch_coco(out, splits)`` installs the archives of ``splits`` (``SPLITS``: train, val, test, annotations)
into ``out`` and returns the ``data.coco.*`` overrides that point a job at them::

    out/train2017/*.jpg   out/val2017/*.jpg   out/test2017/*.jpg
    out/annotations/instances_{train,val}2017.json   out/annotations/image_info_test-dev2017.json

Per archive: a download goes to ``out/<name>.part`` and resumes from its end (HTTP ``Range``) when run
again; the complete file is checked against its published MD5 (a mismatch is kept as ``<name>.bad`` and
raises ``ValueError``), extracted, its expected paths checked, and ``out/<name>.verified`` written. An
archive with that marker (and its paths present) is skipped. ``archives_dir`` installs archives downloaded
by hand instead, with the same checks, and never deletes them. A machine that cannot reach the host gets
:class:`HostUnreachableError`, whose message says how to do that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

__all__ = ["ARCHIVES", "BASE_URL", "SPLITS", "CocoArchive", "HostUnreachableError", "coco_overrides",
           "download", "fetch_coco", "file_md5", "install_archive"]

log = logging.getLogger(__name__)

BASE_URL = "http://images.cocodataset.org/"
CHUNK = 1 << 20
_md5 = partial(hashlib.md5, usedforsecurity=False)


@dataclass(frozen=True)
class CocoArchive:
    """One archive: its file ``name``, its ``path`` under the base URL, its ``size`` in bytes and ``md5``
    (``None`` where not published: the file is then installed unchecked, its MD5 logged), and the paths
    (relative to the output folder) that its extraction must create."""

    name: str
    path: str
    size: int | None
    md5: str | None
    creates: tuple[str, ...]

    def url(self, base_url: str = BASE_URL) -> str:
        return base_url.rstrip("/") + "/" + self.path


# Sizes as the host serves them; MD5s are the published checksums of the archives (the values that
# torchvision's and other loaders check).
ARCHIVES: dict[str, CocoArchive] = {a.name: a for a in [
    CocoArchive("train2017.zip", "zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2",
                ("train2017",)),
    CocoArchive("val2017.zip", "zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80",
                ("val2017",)),
    CocoArchive("test2017.zip", "zips/test2017.zip", 6_646_970_404, "77ad2c53ac5d0aea611d422c0938fb35",
                ("test2017",)),
    CocoArchive("annotations_trainval2017.zip", "annotations/annotations_trainval2017.zip", 252_907_541,
                "f4bbac642086de4f52a3fdda2de5fa2c",
                ("annotations/instances_train2017.json", "annotations/instances_val2017.json")),
    CocoArchive("image_info_test2017.zip", "annotations/image_info_test2017.zip", 1_144_034,
                "85da7065e5e600ebfee8af1edb634eb5", ("annotations/image_info_test-dev2017.json",)),
]}

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train2017.zip",),
    "val": ("val2017.zip",),
    "test": ("test2017.zip", "image_info_test2017.zip"),  # test-dev images + their image list (no boxes)
    "annotations": ("annotations_trainval2017.zip",),
}
"""``--splits`` name → the archives it installs."""


class HostUnreachableError(ConnectionError):
    """The archive host could not be reached (offline, firewall, proxy, dropped connection)."""


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def file_md5(path: Path, progress: bool = True) -> str:
    """The MD5 hex digest of ``path``, read in 1 MiB chunks."""
    h = _md5()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, desc=f"md5 {path.name}", unit="B",
                                     unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _unreachable(url: str, reason: object, part: Path | None = None, lost: bool = False) -> HostUnreachableError:
    host = urllib.parse.urlparse(url).netloc
    kept = (f" The {part.stat().st_size} bytes received are kept in {part}; run the same command again to "
            "resume." if part is not None and part.is_file() else "")
    return HostUnreachableError(
        f"{'lost' if lost else 'cannot reach'} {host} ({url}): {reason}.{kept} If this machine has no internet "
        f"access, download the archives on one that has (the URLs are under {BASE_URL}zips/ and "
        f"{BASE_URL}annotations/), copy them into one folder here and run `prism data coco --out DIR --archives "
        "THAT_FOLDER` (archives_dir= in Python): they are checked (MD5) and extracted the same way.")


def download(url: str, dest: Path, size: int | None = None, progress: bool = True, timeout: float = 30.0) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming from the part's end; returns the MD5.

    A server that ignores ``Range`` (answers 200) restarts the file. ``size`` (bytes, when known) sizes the
    progress bar and lets a complete part finish without a request. Raises :class:`HostUnreachableError`
    when the host cannot be reached or the connection drops (the part is kept for the next try).
    """
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        log.warning("%s holds %d bytes, more than the %d expected; starting again", part, have, size)
        have = 0
    h = _md5()
    if have:
        with open(part, "rb") as f:  # the MD5 goes on from the bytes already there
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    if size is not None and have == size:
        part.replace(dest)
        return h.hexdigest()
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past the part's end: start again, the MD5 then decides
            part.unlink()
            return download(url, dest, size, progress, timeout)
        raise ValueError(f"{url}: the server answered HTTP {e.code} {e.reason}; check the base URL "
                         "(--base-url)") from None
    except OSError as e:  # URLError (refused, no route, DNS), timeouts
        raise _unreachable(url, getattr(e, "reason", e), part) from None
    with response:
        if have and response.status != 206:
            log.warning("%s ignores the Range header; downloading %s from the start", url, dest.name)
            have, h = 0, _md5()
        elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            response.close()  # a range other than the one asked for: start again
            part.unlink()
            return download(url, dest, size, progress, timeout)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        got = have
        try:
            with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
                    disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
                    got += len(chunk)
        except (TimeoutError, ConnectionError, HTTPException) as e:  # not OSError: a full disk is no network error
            raise _unreachable(url, f"the connection dropped ({e!r})", part, lost=True) from None
        if length is not None and got < total:  # read(n) returns b"" when the server closes early
            raise _unreachable(url, f"the connection dropped after {got} of {total} bytes", part, lost=True)
    part.replace(dest)
    return h.hexdigest()


def _check_md5(path: Path, archive: CocoArchive, got: str, keep_bad: bool) -> None:
    if archive.md5 is None:
        log.warning("%s has no published MD5; installed unchecked (its MD5 is %s)", archive.name, got)
        return
    if got == archive.md5:
        return
    where = path
    if keep_bad:  # a download: moved aside, so that the next run downloads afresh
        where = path.with_name(path.name + ".bad")
        path.replace(where)
    raise ValueError(f"{archive.name}: MD5 mismatch, expected {archive.md5}, got {got} "
                     f"({where.stat().st_size} bytes, expected {archive.size}); the file ({where}) is damaged "
                     "or not the official archive. Delete it and download again.")


def _extract(path: Path, out: Path, progress: bool) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            need = sum(m.file_size for m in members)
            free = shutil.disk_usage(out).free
            if need > free:
                raise ValueError(f"extracting {path.name} needs {_gib(need)}; {out} has {_gib(free)} free")
            for m in tqdm(members, desc=f"extract {path.name}", unit="file", disable=not progress):
                z.extract(m, out)  # zipfile drops absolute paths and '..' from member names
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a readable zip archive ({e}); delete it and download again") from None


def _marker(out: Path, archive: CocoArchive) -> Path:
    return out / f"{archive.name}.verified"


def _installed(out: Path, archive: CocoArchive) -> bool:
    marker = _marker(out, archive)
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text()).get("md5")
    except (json.JSONDecodeError, AttributeError):  # a damaged marker: install again
        return False
    return (archive.md5 is None or recorded == archive.md5) and all((out / p).exists() for p in archive.creates)


def install_archive(archive: CocoArchive, out: str | Path, *, base_url: str = BASE_URL,
                    archives_dir: str | Path | None = None, keep_archive: bool = False, progress: bool = True,
                    timeout: float = 30.0) -> bool:
    """Download (or take from ``archives_dir``), check, extract and mark one archive; False if it was
    already installed (nothing read or requested)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if _installed(out, archive):
        log.info("%s: already downloaded and verified (%s); skipped", archive.name, _marker(out, archive))
        return False
    if archives_dir is not None:
        path = Path(archives_dir) / archive.name
        if not path.is_file():
            raise ValueError(f"--archives {archives_dir} has no {archive.name}; download it from "
                             f"{archive.url()} ({archive.size} bytes) into that folder")
        got = file_md5(path, progress)
        _check_md5(path, archive, got, keep_bad=False)
    else:
        path = out / archive.name
        if path.is_file():  # downloaded before, not yet extracted
            got = file_md5(path, progress)
        else:
            part = path.with_name(path.name + ".part")
            remaining = (archive.size or 0) - (part.stat().st_size if part.is_file() else 0)
            free = shutil.disk_usage(out).free
            if remaining > free:
                raise ValueError(f"{archive.name} needs {_gib(remaining)} more; {out} has {_gib(free)} free")
            got = download(archive.url(base_url), path, archive.size, progress, timeout)
        _check_md5(path, archive, got, keep_bad=True)
    _extract(path, out, progress)
    missing = [p for p in archive.creates if not (out / p).exists()]
    if missing:
        raise ValueError(f"{archive.name} was extracted into {out} but {missing} are not there; it is not the "
                         "official archive")
    record = {"archive": archive.name, "md5": got, "url": archive.url(base_url), "source": str(path)}
    _marker(out, archive).write_text(json.dumps(record))
    if archives_dir is None and not keep_archive:
        path.unlink()
    return True


def coco_overrides(out: str | Path) -> dict[str, str]:
    """The ``data.coco.*`` overrides of the splits that ``out`` holds (annotation file and image folder)."""
    out = Path(out).resolve()
    overrides = {}
    for split in ("train", "val"):
        json_path, images = out / f"annotations/instances_{split}2017.json", out / f"{split}2017"
        if json_path.is_file() and images.is_dir():
            overrides[f"data.coco.{split}"] = str(json_path)
            overrides[f"data.coco.{split}_images"] = str(images)
    return overrides


def fetch_coco(out: str | Path, splits: Iterable[str] = ("train", "val", "annotations"), *,
               base_url: str = BASE_URL, archives_dir: str | Path | None = None, keep_archives: bool = False,
               progress: bool = True, table: Mapping[str, CocoArchive] | None = None,
               timeout: float = 30.0) -> dict[str, str]:
    """Install the archives of ``splits`` (``SPLITS``) into ``out``; returns :func:`coco_overrides`.

    ``table`` replaces ``ARCHIVES`` (archive name → :class:`CocoArchive`).
    """
    table = ARCHIVES if table is None else table
    splits = list(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown COCO split(s) {unknown}; valid: {list(SPLITS)}")
    names = dict.fromkeys(n for s in splits for n in SPLITS[s])  # in order, once each
    for name in names:
        install_archive(table[name], out, base_url=base_url, archives_dir=archives_dir,
                        keep_archive=keep_archives, progress=progress, timeout=timeout)
    return coco_overrides(out)
