"""Small WebDataset shard sets for the data tests: rendered sketches written by ``prism.data.shards``."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from prism.data.shards import ShardSet, table_to_shards
from prism.data.synth import generate_sketches

CLASSES = ["apple", "cat", "house", "key"]


def sketch_shards(root: Path, n: int = 40, per_shard: int = 10, prefix: str = "train", seed: int = 0) -> ShardSet:
    """``n`` 32 px sketches of :data:`CLASSES` in shards of ``per_shard`` under ``root/shards``."""
    src = generate_sketches(root / f"src-{prefix}", n=n, size=32, seed=seed, classes=CLASSES, progress=False)
    return table_to_shards(src / "labels.csv", root / "shards", CLASSES, prefix=prefix, per_shard=per_shard,
                           progress=False)


def members(shard: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}`` of one tar shard, read with the standard library (independent of Ray)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            key, ext = info.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return out


def rewrite(shard: Path, change: dict[str, dict[str, bytes | None]]) -> None:
    """Rewrite ``shard`` with members replaced (``None`` removes one): ``{key: {ext: bytes | None}}``."""
    samples = members(shard)
    for key, exts in change.items():
        for ext, data in exts.items():
            if data is None:
                samples[key].pop(ext, None)
            else:
                samples[key][ext] = data
    with tarfile.open(shard, "w") as tar:
        for key, exts in samples.items():
            for ext, data in exts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
