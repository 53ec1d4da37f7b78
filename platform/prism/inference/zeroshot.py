"""Zero-shot evaluation on held-out classes: images of classes the model never trained on, scored by CLIP
text embeddings of their names or by prototypes of a few support images per class.

    held-out images (shards or a labels CSV) ─ predictor ─▶ embeddings (N, D), labels (N,)
        text        bank = text tower(class names × templates); every image is a query
        prototypes  per class, ``shots`` support images chosen with ``seed`` → bank; the others are queries
    queries ─ bank.probs ─▶ ClassifyMetrics over the held-out classes: top-1, top-5, macro-F1, per class

The bank that was scored is the one returned (and, with ``prism evaluate --save-bundle``, saved with a copy
of the model as ``artifacts/zeroshot.safetensors``), so what is served is what was measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prism.inference.predictor import Predictor
from prism.tasks.classify.bank import ClassBank

__all__ = ["HeldOutSample", "ZeroShotReport", "evaluate_zero_shot", "read_held_out_csv", "read_held_out_shards"]

MODES = ("text", "prototypes")


@dataclass(frozen=True)
class HeldOutSample:
    """One labelled image: where it is (``shard/key`` or a path), its bytes or path, its class index."""

    name: str
    image: bytes | str
    label: int


def read_held_out_shards(patterns: Sequence[str], classes: Sequence[str]) -> Iterator[HeldOutSample]:
    """The samples of WebDataset shards (brace patterns, local paths or URIs), streamed one tar at a time
    (webdataset's own tar reader and key grouping). The class is the ``txt`` member's name, else the ``cls``
    index into ``classes``; a name not in ``classes``, an index out of range or a sample without an image is
    a ``ValueError`` naming its shard and key."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from prism.data.shards import IMAGE_EXTS
    from prism.data.uris import open_filesystem
    from prism.data.webdataset import check_shards, expand_shards

    index = {c: i for i, c in enumerate(classes)}
    for shard in check_shards(expand_shards(list(patterns))).shards:
        fs, path = open_filesystem(shard)
        with fs.open_input_stream(path) as stream:
            for sample in group_by_keys(tar_file_expander([{"stream": stream, "url": shard}])):
                key, where = sample["__key__"], f"{shard} key {sample['__key__']}"
                image = next((sample[e] for e in (*IMAGE_EXTS, "jpeg") if e in sample), None)
                if image is None:
                    raise ValueError(f"{where}: no image member ({', '.join(IMAGE_EXTS)})")
                if "txt" in sample:
                    name = sample["txt"].decode().strip()
                    if name not in index:
                        raise ValueError(f"{where}: class {name!r} is not one of the {len(index)} held-out classes")
                    label = index[name]
                elif "cls" in sample:
                    label = int(sample["cls"].decode().strip())
                    if not 0 <= label < len(classes):
                        raise ValueError(f"{where}: class index {label} is outside 0..{len(classes) - 1}")
                else:
                    raise ValueError(f"{where}: no label member (txt or cls)")
                yield HeldOutSample(f"{shard}/{key}", image, label)


def read_held_out_csv(labels_csv: Path, classes: Sequence[str], image_root: Path | None = None,
                      image_column: str = "image", label_column: str = "label") -> Iterator[HeldOutSample]:
    """The rows of a labels CSV (checked as training checks them: files exist, labels are ``classes``)."""
    from prism.data.table import read_label_table

    index = {c: i for i, c in enumerate(classes)}

    def unknown(df):
        return df[label_column].astype(str).str.strip().map(
            lambda v: "" if v in index else f"label {v!r} is not one of the {len(index)} held-out classes")

    table = read_label_table(Path(labels_csv), image_column, [label_column], unknown, "error", image_root=image_root)
    for path, label in zip(table.rows["path"], table.rows[label_column], strict=True):
        yield HeldOutSample(str(path), str(path), index[str(label).strip()])


@dataclass
class ZeroShotReport:
    """Metrics of one zero-shot evaluation: ``metrics`` (``top1``, ``top5``, ``macro_f1``, … and ``chance``),
    ``stats`` (what :class:`~prism.tasks.classify.metrics.ClassifyMetrics` exports), the scored ``bank``."""

    mode: str
    classes: list[str]
    metrics: dict[str, float]
    stats: dict[str, Any]
    bank: ClassBank
    n_images: int
    n_queries: int
    shots: int | None = None
    support: list[str] = field(default_factory=list)
    """Names of the support images (prototypes), so the split can be reproduced and audited."""

    def describe(self) -> str:
        how = (f"{self.shots} support images per class, {self.n_queries} queries" if self.mode == "prototypes"
               else f"{self.n_queries} images, class names through {len(self.bank.templates)} templates")
        return f"zero-shot ({self.mode}) on {len(self.classes)} held-out classes: {how}"

    def save(self, out_dir: Path, predictor: Predictor) -> list[Path]:
        """``zero_shot.json``, ``per_class.csv`` and the figures of the held-out classes in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        held = held_out_task(predictor, self.classes)
        main = out_dir / "zero_shot.json"
        main.write_text(json.dumps({"mode": self.mode, "classes": self.classes, "n_images": self.n_images,
                                    "n_queries": self.n_queries, "shots": self.shots, "metrics": self.metrics,
                                    "support": self.support, **self.stats}, indent=2))
        written = [main]
        for rel, fig in held.figures(self.stats).items():
            fig.savefig(out_dir / rel)
            written.append(out_dir / rel)
        for rel, table in held.tables(self.stats).items():
            table.to_csv(out_dir / rel, index=False)
            written.append(out_dir / rel)
        return written


def held_out_task(predictor: Predictor, classes: Sequence[str]):
    """The model's classify task with ``classes`` as its classes (metrics, figures and tables over them)."""
    from prism.tasks.classify.task import ClassifyTask

    cfg = predictor.cfg
    tcfg = cfg.task.model_copy(update={"classes": list(classes), "classes_file": None, "class_weights": None})
    return ClassifyTask(cfg.model_copy(update={"task": tcfg}))


def embed(predictor: Predictor, samples: Iterator[HeldOutSample], output: str, tta: bool = True,
          batch_size: int = 32, progress: bool = True) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Every sample → ``(embeddings (N, D) float32, labels (N,) int64, names)``: the predictions' ``output``
    (``embedding`` or ``image_embedding``), batch by batch through the predictor's preprocessing."""
    from tqdm import tqdm

    opts = predictor.options(tta=tta)
    chunks: list[torch.Tensor] = []
    labels: list[int] = []
    names: list[str] = []
    batch: list[HeldOutSample] = []

    def flush() -> None:
        preds = predictor.raw_predictions([predictor.prepare(s.image, s.name, opts) for s in batch], bool(opts.tta))
        if output not in preds:
            raise ValueError(f"the model's predictions have no {output!r} (they have {sorted(preds)})")
        chunks.append(preds[output].float().cpu())
        labels.extend(s.label for s in batch)
        names.extend(s.name for s in batch)
        batch.clear()

    bar = tqdm(desc="embed", unit="img", disable=not progress)
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            flush()
            bar.update(batch_size)
    if batch:
        bar.update(len(batch))
        flush()
    bar.close()
    if not chunks:
        raise ValueError("no held-out images to evaluate")
    return torch.cat(chunks), np.asarray(labels, dtype=np.int64), names


def split_support(labels: np.ndarray, num_classes: int, shots: int, seed: int = 0) -> np.ndarray:
    """A boolean mask (N,) of ``shots`` support images per class, chosen with ``seed``; every class needs
    more than ``shots`` images (at least one query), else ``ValueError`` naming the short classes."""
    counts = np.bincount(labels, minlength=num_classes)
    short = [int(c) for c in np.flatnonzero(counts <= shots)]
    if short:
        raise ValueError(f"prototypes with {shots} shots need more than {shots} images per class; classes "
                         f"{short[:10]} have {[int(counts[c]) for c in short[:10]]}")
    rng = np.random.default_rng(seed)
    support = np.zeros(len(labels), dtype=bool)
    for c in range(num_classes):
        support[rng.choice(np.flatnonzero(labels == c), shots, replace=False)] = True
    return support


def evaluate_zero_shot(predictor: Predictor, samples: Iterator[HeldOutSample], classes: Sequence[str],
                       mode: str = "prototypes", shots: int = 5, seed: int = 0, tta: bool = True,
                       batch_size: int = 32, progress: bool = True) -> ZeroShotReport:
    """Top-1 / top-5 / macro-F1 of zero-shot classification of ``samples`` into the held-out ``classes``
    (see the module docstring). ``mode``: ``text`` (CLIP backbones) or ``prototypes`` (any backbone)."""
    from prism.tasks.classify.zeroshot import class_prototypes

    if mode not in MODES:
        raise ValueError(f"zero-shot mode must be one of {MODES}, got {mode!r}")
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"zero-shot evaluation needs at least 2 held-out classes, got {classes}")
    task = predictor.task
    overlap = sorted(set(classes) & set(task.classes))
    if overlap:
        raise ValueError(f"held-out classes the model was trained on: {overlap[:10]}; zero-shot scores classes "
                         "it never saw")
    if mode == "text":
        bank = task.text_bank(classes)  # raises for a backbone without a text tower, before any image is read
    emb, labels, names = embed(predictor, samples, "image_embedding" if mode == "text" else "embedding",
                               tta, batch_size, progress)
    support_names: list[str] = []
    if mode == "prototypes":
        support = split_support(labels, len(classes), shots, seed)
        bank = ClassBank("prototypes", classes, class_prototypes(emb[support], torch.from_numpy(labels[support]),
                                                                 len(classes)), shots=shots)
        support_names = [n for n, s in zip(names, support, strict=True) if s]
        emb, labels = emb[~support], labels[~support]
    acc = held_out_task(predictor, classes).metrics()
    acc.update({"probs": bank.probs(emb)}, {"y_label": torch.from_numpy(labels)})
    metrics = {k: v for k, v in acc.compute(prefix="").items() if k != "loss"}
    metrics["chance"] = 1.0 / len(classes)
    return ZeroShotReport(mode, classes, metrics, acc.export(), bank, len(names), len(labels),
                          shots if mode == "prototypes" else None, support_names)
