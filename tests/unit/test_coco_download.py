"""``prism data coco`` against a local HTTP server: tiny COCO-shaped archives (synthetic shapes) are
downloaded, resumed after a dropped connection or from a ``.part`` file, MD5-checked, extracted and read
back by ``read_coco``; a second run requests nothing; a closed port and ``--archives`` behave as documented."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prism.cli.main import main
from prism.data import coco_download
from prism.data.coco import read_coco
from prism.data.coco_download import (
    ARCHIVES,
    HostUnreachableError,
    download,
    fetch_coco,
    install_archive,
)
from prism.data.synth.shapes import generate_shapes


def _shapes_zip(tmp: Path, split: str, seed: int) -> tuple[bytes, dict]:
    """``<split>2017/*.png`` zipped, and the instances dict whose file names are relative to that folder."""
    src = generate_shapes(tmp / split, n=3, size=32, seed=seed, progress=False)
    instances = json.loads((src / "instances.json").read_text())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for im in instances["images"]:
            z.write(src / im["file_name"], f"{split}2017/{Path(im['file_name']).name}")
            im["file_name"] = Path(im["file_name"]).name
    return buf.getvalue(), instances


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """Tiny stand-ins for train2017.zip, val2017.zip and annotations_trainval2017.zip."""
    tmp = tmp_path_factory.mktemp("coco-src")
    train, train_json = _shapes_zip(tmp, "train", seed=1)
    val, val_json = _shapes_zip(tmp, "val", seed=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("annotations/instances_train2017.json", json.dumps(train_json))
        z.writestr("annotations/instances_val2017.json", json.dumps(val_json))
    return {"train2017.zip": train, "val2017.zip": val, "annotations_trainval2017.zip": buf.getvalue()}


@pytest.fixture
def table(archives) -> dict[str, coco_download.CocoArchive]:
    """``ARCHIVES`` with the tiny archives' sizes and MD5s."""
    return {name: dataclasses.replace(ARCHIVES[name], size=len(data), md5=hashlib.md5(data).hexdigest())
            for name, data in archives.items()}


class _Handler(BaseHTTPRequestHandler):
    """GET of ``server.files``; ``Range: bytes=N-`` answered 206 unless ``server.ranges`` is False;
    ``server.drop`` sends half the body then closes the connection."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, rng = 0, self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:start + (len(body) - start) // 2] if srv.drop else body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(archives):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {"/" + ARCHIVES[name].path: data for name, data in archives.items()}
    srv.requests, srv.ranges, srv.drop = [], True, False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def closed_url() -> str:
    """A URL on a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_check_extract_reads_as_coco(tmp_path, server, table):
    out = tmp_path / "coco"
    overrides = fetch_coco(out, ["val", "annotations"], base_url=server.url, table=table, progress=False)
    assert overrides == {"data.coco.val": str((out / "annotations/instances_val2017.json").resolve()),
                         "data.coco.val_images": str((out / "val2017").resolve())}
    t = read_coco(overrides["data.coco.val"], overrides["data.coco.val_images"])
    assert len(t.rows) == 3 and all(Path(p).is_file() for p in t.rows["path"])
    assert t.category_ids == [1, 4, 7]
    assert (out / "val2017.zip.verified").is_file() and not (out / "val2017.zip").exists()  # zip deleted
    assert [r[1] for r in server.requests] == [None, None]


@pytest.mark.parametrize("ranges", [True, False], ids=["range-honoured", "range-ignored"])
def test_a_part_file_is_resumed(tmp_path, server, table, archives, ranges):
    server.ranges = ranges
    data = archives["val2017.zip"]
    (tmp_path / "val2017.zip.part").write_bytes(data[: len(data) // 2])
    assert install_archive(table["val2017.zip"], tmp_path, base_url=server.url, progress=False)
    assert server.requests == [("/zips/val2017.zip", f"bytes={len(data) // 2}-")]
    assert (tmp_path / "val2017.zip.verified").is_file() and len(list((tmp_path / "val2017").iterdir())) == 3


def test_a_dropped_connection_keeps_the_part_and_the_next_run_resumes(tmp_path, server, table, archives):
    server.drop = True
    with pytest.raises(HostUnreachableError, match="connection dropped.*run the same command again"):
        install_archive(table["val2017.zip"], tmp_path, base_url=server.url, progress=False)
    half = (tmp_path / "val2017.zip.part").stat().st_size
    assert half == len(archives["val2017.zip"]) // 2
    server.drop = False
    assert install_archive(table["val2017.zip"], tmp_path, base_url=server.url, progress=False)
    assert server.requests[-1][1] == f"bytes={half}-" and (tmp_path / "val2017.zip.verified").is_file()


def test_a_complete_part_needs_no_request(tmp_path, server, archives):
    data = archives["val2017.zip"]
    (tmp_path / "val2017.zip.part").write_bytes(data)
    md5 = download(server.url + "zips/val2017.zip", tmp_path / "val2017.zip", size=len(data), progress=False)
    assert md5 == hashlib.md5(data).hexdigest() and (tmp_path / "val2017.zip").read_bytes() == data
    assert server.requests == []


def test_a_wrong_md5_names_the_file_and_keeps_it_aside(tmp_path, server, table, archives):
    bad = {**table, "val2017.zip": dataclasses.replace(table["val2017.zip"], md5="0" * 32)}
    got = hashlib.md5(archives["val2017.zip"]).hexdigest()
    with pytest.raises(ValueError, match=f"val2017.zip: MD5 mismatch, expected {'0' * 32}, got {got}"):
        fetch_coco(tmp_path, ["val"], base_url=server.url, table=bad, progress=False)
    assert (tmp_path / "val2017.zip.bad").is_file() and not (tmp_path / "val2017.zip.verified").exists()
    assert not (tmp_path / "val2017").exists()


def test_an_archive_without_its_expected_paths_is_refused(tmp_path, server, table):
    odd = {**table, "val2017.zip": dataclasses.replace(table["val2017.zip"], creates=("val2017/nothing.jpg",))}
    with pytest.raises(ValueError, match=r"\['val2017/nothing.jpg'\] are not there"):
        fetch_coco(tmp_path, ["val"], base_url=server.url, table=odd, progress=False)


def test_a_second_run_requests_nothing(tmp_path, server, table):
    first = fetch_coco(tmp_path, ["train", "val", "annotations"], base_url=server.url, table=table,
                       progress=False)
    assert len(server.requests) == 3 and set(first) == {"data.coco.train", "data.coco.train_images",
                                                        "data.coco.val", "data.coco.val_images"}
    server.requests.clear()
    assert fetch_coco(tmp_path, ["train", "val", "annotations"], base_url=server.url, table=table,
                      progress=False) == first
    assert server.requests == []


def test_an_unreachable_host_says_how_to_install_by_hand(tmp_path, table, closed_url):
    with pytest.raises(HostUnreachableError, match=r"cannot reach 127\.0\.0\.1:\d+ .*--archives"):
        fetch_coco(tmp_path, ["val"], base_url=closed_url, table=table, progress=False, timeout=5)


def test_archives_downloaded_by_hand_are_checked_extracted_and_left_in_place(tmp_path, table, archives,
                                                                             closed_url):
    zips = tmp_path / "zips"
    zips.mkdir()
    for name in ("val2017.zip", "annotations_trainval2017.zip"):
        (zips / name).write_bytes(archives[name])
    out = tmp_path / "coco"
    overrides = fetch_coco(out, ["val", "annotations"], base_url=closed_url, archives_dir=zips, table=table,
                           progress=False)
    assert len(read_coco(overrides["data.coco.val"], overrides["data.coco.val_images"]).rows) == 3
    assert sorted(p.name for p in zips.iterdir()) == ["annotations_trainval2017.zip", "val2017.zip"]
    with pytest.raises(ValueError, match="has no train2017.zip; download it from http://images.cocodataset.org"):
        fetch_coco(out, ["train"], archives_dir=zips, table=table, progress=False)


def test_cli(tmp_path, server, table, closed_url, monkeypatch, capsys):
    monkeypatch.setattr(coco_download, "ARCHIVES", table)
    out = tmp_path / "coco"
    assert main(["data", "coco", "--out", str(out), "--splits", "val", "annotations",
                 "--base-url", server.url]) == 0
    printed = capsys.readouterr().out
    assert f"data.coco.val={(out / 'annotations/instances_val2017.json').resolve()}" in printed
    assert main(["data", "coco", "--out", str(tmp_path / "other"), "--splits", "val",
                 "--base-url", closed_url]) == 2
    assert "prism: error: cannot reach" in capsys.readouterr().err
