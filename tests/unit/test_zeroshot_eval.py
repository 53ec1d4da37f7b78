"""Zero-shot evaluation and serving of held-out classes: `evaluate_zero_shot` on shards and CSVs, the bank
saved with a copy of the model, and the request options `zero_shot` and `classes` (CLIP text).

The numbers are checked against direct computations with the building blocks (tested against open_clip in
test_zeroshot_text.py) and scikit-learn's top-k accuracy; learning itself is test_zeroshot_prototypes.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from prism.data.shards import write_shards
from prism.inference.bundle import load_bundle, rewrite_task_files, stage_bundle
from prism.inference.predictor import Predictor
from prism.inference.zeroshot import (
    evaluate_zero_shot,
    read_held_out_csv,
    read_held_out_shards,
    split_support,
)
from prism.tasks.classify.bank import ClassBank
from prism.tasks.classify.zeroshot import class_prototypes, text_class_embeddings, zero_shot_probs
from tests.helpers.bundles import classify_bundle

SEEN = ["cat", "dog", "bird"]
HELD_OUT = [f"new_{i}" for i in range(7)]
PER_CLASS = 4


def _bundle(path, backbone: str, img_size: int):
    return classify_bundle(path, backbone, img_size, tuple(SEEN))


def _png(rng, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Shards of PER_CLASS random images per held-out class (names in txt, indices in cls)."""
    rng = np.random.default_rng(0)
    samples = [{"__key__": f"s{i:04d}", "png": _png(rng, 40), "cls": i % len(HELD_OUT), "txt": HELD_OUT[i % len(HELD_OUT)]}
               for i in range(PER_CLASS * len(HELD_OUT))]
    out = tmp_path_factory.mktemp("heldout")
    shards = write_shards(samples, out, "heldout", per_shard=10, progress=False)
    return shards, samples


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return Predictor.from_bundle(_bundle(tmp_path_factory.mktemp("dino") / "b", "dinov2_tiny", 28), "cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return Predictor.from_bundle(_bundle(tmp_path_factory.mktemp("clip") / "b", "clip_tiny", 64), "cpu")


def _embed(pred: Predictor, images: list[bytes], output: str) -> torch.Tensor:
    prepared = [pred.prepare(b) for b in images]
    from prism.engine.inputs import model_inputs, stack_inputs

    inputs = model_inputs(stack_inputs([p[0] for p in prepared]), "cpu", pred.model.backbone.mean,
                          pred.model.backbone.std)
    with torch.no_grad():
        return pred.task.predictions(pred.model, inputs, tta=True)[output]


def test_shards_are_read_with_their_keys_and_labels(held_out):
    shards, samples = held_out
    got = list(read_held_out_shards([shards.pattern], HELD_OUT))
    assert len(shards.shards) == 3 and len(got) == len(samples)
    assert [g.label for g in got] == [s["cls"] for s in samples]
    assert got[0].name.endswith("heldout-000000.tar/s0000") and got[0].image == samples[0]["png"]
    with pytest.raises(ValueError, match=r"heldout-000000.tar key s0000: class 'new_0' is not one of the 2"):
        list(read_held_out_shards([shards.pattern], ["a", "b"]))


def test_prototype_evaluation_equals_a_direct_computation(dino, held_out):
    shards, samples = held_out
    report = evaluate_zero_shot(dino, read_held_out_shards([shards.pattern], HELD_OUT), HELD_OUT, "prototypes",
                                shots=2, seed=3, progress=False)
    labels = np.array([s["cls"] for s in samples])
    support = split_support(labels, len(HELD_OUT), 2, seed=3)
    assert support.sum() == 2 * len(HELD_OUT) and np.bincount(labels[support]).tolist() == [2] * len(HELD_OUT)
    emb = _embed(dino, [s["png"] for s in samples], "embedding")
    protos = class_prototypes(emb[support], torch.from_numpy(labels[support]), len(HELD_OUT))
    torch.testing.assert_close(report.bank.embeddings, protos, atol=1e-5, rtol=1e-4)
    probs = zero_shot_probs(emb[~support], protos).numpy()
    truth = labels[~support]
    assert report.n_queries == len(truth) == (PER_CLASS - 2) * len(HELD_OUT)
    assert report.metrics["top1"] == pytest.approx(accuracy_score(truth, probs.argmax(1)))
    assert report.metrics["top5"] == pytest.approx(top_k_accuracy_score(truth, probs, k=5,
                                                                        labels=range(len(HELD_OUT))))
    assert report.metrics["chance"] == pytest.approx(1 / 7)
    assert len(report.support) == 14 and all(".tar/s" in n for n in report.support)


def test_held_out_classes_must_be_new_and_have_queries(dino, held_out):
    shards, _ = held_out
    with pytest.raises(ValueError, match="trained on: \\['cat'\\]"):
        evaluate_zero_shot(dino, iter([]), ["cat", "new_0"], "prototypes")
    with pytest.raises(ValueError, match="need more than 4 images per class"):
        evaluate_zero_shot(dino, read_held_out_shards([shards.pattern], HELD_OUT), HELD_OUT, "prototypes",
                           shots=4, progress=False)
    with pytest.raises(ValueError, match="has no text tower"):
        evaluate_zero_shot(dino, iter([]), HELD_OUT, "text")


def test_saved_bank_serves_the_held_out_classes(dino, held_out, tmp_path):
    shards, samples = held_out
    report = evaluate_zero_shot(dino, read_held_out_shards([shards.pattern], HELD_OUT), HELD_OUT, "prototypes",
                                shots=1, progress=False)
    out = stage_bundle(dino.source, tmp_path / "zs")
    dino.task.bank = report.bank
    try:
        rewrite_task_files(out, dino.task, dino.model)
    finally:
        dino.task.bank = None
    served = Predictor.from_bundle(out, "cpu")
    assert json.loads((out / "labels.json").read_text())["zero_shot"] == {"kind": "prototypes", "classes": HELD_OUT}
    images = [s["png"] for s in samples[:5]]
    got = served.predict(images, options={"zero_shot": True, "top_k": 3})
    expected = report.bank.probs(_embed(dino, images, "embedding"))
    for r, p in zip(got, expected, strict=True):
        assert r["prediction"] == HELD_OUT[int(p.argmax())] and len(r["top_k"]) == 3
        assert r["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    trained = served.predict(images[:1])[0]
    assert trained["prediction"] in SEEN  # without the option: the trained head, as before
    with pytest.raises(ValueError, match="no zero-shot classes"):
        dino.predict(images[:1], options={"zero_shot": True})
    (out / "artifacts" / "zeroshot.safetensors").write_bytes(b"changed")
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_bundle(out)


def test_request_time_class_names_score_clip_text(clip):
    rng = np.random.default_rng(1)
    images = [_png(rng, 64) for _ in range(3)]
    names = ["a cat", "a dog", "a bicycle"]
    got = clip.predict(images, options={"classes": names})
    text = text_class_embeddings(clip.task.text_tower(), names)
    expected = zero_shot_probs(_embed(clip, images, "image_embedding"), text)
    for r, p in zip(got, expected, strict=True):
        assert [e["class"] for e in r["top_k"]] == [names[i] for i in p.argsort(descending=True)]
        assert r["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    assert clip.predict(images[:1])[0]["prediction"] in SEEN


def test_request_options_are_checked_before_any_image(clip, dino):
    with pytest.raises(ValueError, match="needs a CLIP backbone"):
        dino.options({"classes": ["a", "b"]})
    with pytest.raises(ValueError, match="unique, non-empty"):
        clip.options({"classes": ["a", " a"]})
    with pytest.raises(ValueError, match="either classes"):
        clip.options({"classes": ["a", "b"], "zero_shot": True})


def test_text_evaluation_and_its_saved_bank_record_the_text_tower(clip, tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(12):
        name = f"img/{i}.png"
        (tmp_path / name).write_bytes(_png(rng, 64))
        rows.append({"image": name, "label": HELD_OUT[i % 3]})
    pd.DataFrame(rows).to_csv(tmp_path / "held.csv", index=False)
    classes = HELD_OUT[:3]
    report = evaluate_zero_shot(clip, read_held_out_csv(tmp_path / "held.csv", classes), classes, "text",
                                progress=False)
    assert report.n_queries == 12 and report.bank.kind == "text"
    emb = _embed(clip, [(tmp_path / r["image"]).read_bytes() for r in rows], "image_embedding")
    probs = zero_shot_probs(emb, text_class_embeddings(clip.task.text_tower(), classes)).numpy()
    truth = np.arange(12) % 3
    assert report.metrics["top1"] == pytest.approx(accuracy_score(truth, probs.argmax(1)))
    written = report.save(tmp_path / "eval", clip)
    assert {p.name for p in written} >= {"zero_shot.json", "per_class.csv", "confusion.png"}
    assert pd.read_csv(tmp_path / "eval" / "per_class.csv")["class"].tolist() == classes
    out = stage_bundle(clip.source, tmp_path / "zs")
    clip.task.bank = report.bank
    try:
        rewrite_task_files(out, clip.task, clip.model)
    finally:
        clip.task.bank = None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["text_tower"]["sha256"] == clip.task.text_tower().weights_sha256
    assert ClassBank.from_bytes((out / "artifacts" / "zeroshot.safetensors").read_bytes()).classes == classes
    _, task, _ = load_bundle(out)
    assert task.bank.kind == "text" and task.bank.templates == list(clip.cfg.task.zero_shot_templates)


def test_cli_evaluates_and_saves_the_bank(dino, held_out, tmp_path, capsys):
    from prism.cli.main import main

    shards, _ = held_out
    (tmp_path / "held_out.txt").write_text("\n".join(HELD_OUT) + "\n")
    rc = main(["evaluate", "--model", str(dino.source), "--zero-shot", "prototypes", "--classes", str(tmp_path / "held_out.txt"),
               "--shards", shards.pattern, "--shots", "2", "--out", str(tmp_path / "eval"),
               "--save-bundle", str(tmp_path / "zs")])
    out = capsys.readouterr().out
    assert rc == 0 and "top1" in out and "zero_shot=true" in out
    saved = json.loads((tmp_path / "eval" / "zero_shot.json").read_text())
    direct = evaluate_zero_shot(dino, read_held_out_shards([shards.pattern], HELD_OUT), HELD_OUT, "prototypes",
                                shots=2, seed=0, progress=False)
    assert saved["metrics"]["top1"] == pytest.approx(direct.metrics["top1"])
    served = Predictor.from_bundle(tmp_path / "zs", "cpu")
    assert served.task.bank.classes == HELD_OUT
    torch.testing.assert_close(served.task.bank.embeddings, direct.bank.embeddings)
    assert main(["evaluate", "--model", str(dino.source), "--zero-shot", "prototypes", "--classes", "a,b"]) == 2
    assert "--shards PATTERN or --labels CSV" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(dino.source), "--shards", shards.pattern]) == 2
