"""Unlabelled collections: image folders (recursive, subject/clip/frame), list files, videos; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prism.config import load_config
from prism.data.collection import collection_chunks, list_collection
from prism.tasks.features.media import read_video_frames, write_video


def cfg_for(**data):
    return load_config(raw={"task": {"name": "features"}, "lora": None, "stages": [], "data": data})


def put(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def test_recursive_folder_sorted_and_flat_option(tmp_path):
    for rel in ("b/2.png", "a/1.jpg", "top.png", "a/notes.txt"):
        (put(tmp_path / rel) if rel.endswith(("png", "jpg")) else (tmp_path / rel).write_text("x"))
    got = list_collection(cfg_for(root=str(tmp_path)))
    assert [p.split(str(tmp_path))[1] for p in got.rows["path"]] == ["/a/1.jpg", "/b/2.png", "/top.png"]
    flat = list_collection(cfg_for(root=str(tmp_path), images={"recursive": False}))
    assert len(flat.rows) == 1 and flat.info == {"images": 1}


def test_subject_clip_frame_layout_counts_subjects_and_clips(tmp_path):
    for s, clips in (("alice", 2), ("bob", 1)):
        for c in range(clips):
            for f in range(3):
                put(tmp_path / s / f"clip{c}" / f"{f:04d}.png")
    got = list_collection(cfg_for(root=str(tmp_path), images={"layout": "subject_clip_frame"}))
    assert got.info == {"images": 9, "subjects": 2, "clips": 3}
    assert list(got.rows["frame"][:3]) == [0, 1, 2] and got.rows["clip"][0] == "alice/clip0"
    put(tmp_path / "stray.png")
    with pytest.raises(ValueError, match="not at <root>/<subject>/<clip>/<frame>"):
        list_collection(cfg_for(root=str(tmp_path), images={"layout": "subject_clip_frame"}))


def test_list_file_relative_to_root_and_missing_entries_named(tmp_path):
    put(tmp_path / "imgs" / "x.png")
    put(tmp_path / "imgs" / "y.png")
    lst = tmp_path / "list.txt"
    lst.write_text("# chosen\ny.png\n\nx.png\n")
    got = list_collection(cfg_for(root=str(tmp_path / "imgs"), images={"list_file": str(lst)}))
    assert [p.rsplit("/", 1)[1] for p in got.rows["path"]] == ["y.png", "x.png"]  # the list's order
    lst.write_text("y.png\nmissing.png\n")
    with pytest.raises(ValueError, match=r"1 listed image\(s\) not found.*missing.png"):
        list_collection(cfg_for(root=str(tmp_path / "imgs"), images={"list_file": str(lst)}))


def test_empty_folder_and_missing_root_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        list_collection(cfg_for(root=str(tmp_path)))
    with pytest.raises(ValueError, match="not a folder"):
        list_collection(cfg_for(root=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="nothing matches"):
        list_collection(cfg_for(source="video", video={"paths": [str(tmp_path / "*.mp4")]}))


def test_chunks_cover_the_collection_in_order(tmp_path):
    for i in range(7):
        put(tmp_path / f"{i}.png")
    c = list_collection(cfg_for(root=str(tmp_path)))
    chunks = collection_chunks(c, 3)
    assert [len(x) for x in chunks] == [3, 3, 1]
    assert sum((list(x["path"]) for x in chunks), []) == list(c.rows["path"])


def test_video_round_trip_keeps_frame_order(tmp_path):
    frames = [np.full((32, 48, 3), v, np.uint8) for v in (0, 60, 120, 180, 240)]
    assert write_video(iter(frames), tmp_path / "v.mp4", fps=5) == 5
    back = list(read_video_frames(tmp_path / "v.mp4"))
    assert len(back) == 5 and back[0].shape == (32, 48, 3)
    means = [f.mean() for f in back]
    assert means == sorted(means) and abs(means[2] - 120) < 6
    assert len(list(read_video_frames(tmp_path / "v.mp4", stride=2))) == 3
    got = list_collection(cfg_for(source="video", root=str(tmp_path)))
    assert got.info == {"videos": 1} and got.rows["clip"][0].endswith("v.mp4")
