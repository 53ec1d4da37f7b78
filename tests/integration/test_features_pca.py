"""``prism features pca`` on a local Ray, on real photographs: exact against scikit-learn's PCA of a bare
forward loop's features; chunks resume, runs merge, the cap holds, videos stream in order; the bundle is
registered, and renders and predictions come back from ``models:/NAME@ALIAS``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.decomposition import PCA

from prism.config import load_config
from prism.tasks.features.run import PARTIALS, fit_pca, merge_partials, publish_features
from tests.helpers.photos import bare_patch_features, photo_collection

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
K = 10


@pytest.fixture(scope="module")
def photos(workdir):
    return photo_collection(workdir / "photos", crops=6)  # 14 real photographs, two sub-folders


def job(workdir, name: str, **extra):
    raw = {"task": {"name": "features", "components": K, "output": str(workdir / name),
                    "extract": {"chunk_images": 4, "batch_size": 4, **extra.pop("extract", {})}, **extra.pop("task", {})},
           "backbone": {"name": "dinov2_tiny", "img_size": 112, **extra.pop("backbone", {})}, "lora": None,
           "stages": [],
           "data": {"root": str(workdir / "photos"), **extra.pop("data", {})},
           "tracking": {"experiment": "features-it", **extra.pop("tracking", {})}}
    return load_config(raw=raw)


def assert_matches(basis, rows: np.ndarray, rtol: float = 1e-6) -> None:
    ref = PCA(n_components=K, svd_solver="full").fit(rows)
    cos = np.abs((basis.components.numpy() * ref.components_).sum(1))
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(basis.eigenvalues.numpy(), ref.explained_variance_, rtol=rtol)
    assert basis.count == len(rows)


@pytest.fixture(scope="module")
def whole(workdir, photos):
    cfg = job(workdir, "whole")
    return cfg, fit_pca(cfg, progress=False)


def test_pca_equals_sklearn_on_the_same_features(whole, photos):
    """Every patch of 14 real photographs (64 each) through the actor pool, chunked by 4 images, equals
    scikit-learn's PCA of the same patches from a plain loop (float32 forward passes of other batch sizes
    agree to ~1e-6, far inside the bounds)."""
    cfg, out = whole
    assert out.meta["totals"] == {"images": 14, "patches": 14 * 64}
    assert_matches(out.basis, bare_patch_features(cfg, photos))
    pca_json = json.loads((out.bundle / "artifacts" / "pca.json").read_text())
    assert pca_json["backbone"]["grid"] == [8, 8] and pca_json["backbone"]["embed_dim"] == 48
    assert pca_json["patches_per_image"] == 64 and pca_json["components_kept"] == K
    assert len(list((cfg.task.output / PARTIALS).glob("main-*.safetensors"))) == 4  # 14 images by 4


def test_a_killed_run_resumes_from_its_finished_chunks(workdir, whole, capsys):
    cfg, first = whole
    resumed_dir = workdir / "resumed"
    shutil.copytree(cfg.task.output / PARTIALS, resumed_dir / PARTIALS)
    last = sorted((resumed_dir / PARTIALS).glob("main-*"))[-1]
    last.unlink()  # as if the job died in its last chunk
    again = fit_pca(job(workdir, "resumed"), progress=False)
    assert "main pass: 3 of 4 chunk(s) read back" in capsys.readouterr().out
    assert last.is_file()  # recomputed and saved
    np.testing.assert_allclose(again.basis.components.numpy(), first.basis.components.numpy(), atol=1e-9)
    np.testing.assert_allclose(again.basis.eigenvalues.numpy(), first.basis.eigenvalues.numpy(), rtol=1e-9)


def test_separate_runs_merge_into_the_one_run_result(workdir, photos, whole):
    _, first = whole
    parts = []
    for i, half in enumerate((photos[:7], photos[7:])):
        lst = workdir / f"half{i}.txt"
        lst.write_text("\n".join(str(p) for p in half))
        cfg = job(workdir, f"half{i}", data={"images": {"list_file": str(lst)}})
        fit_pca(cfg, progress=False)
        parts += sorted((cfg.task.output / PARTIALS).glob("main-*.safetensors"))
    merged = merge_partials(job(workdir, "merged"), parts)
    np.testing.assert_allclose(np.abs((merged.basis.components.numpy() * first.basis.components.numpy()).sum(1)),
                               1.0, atol=1e-9)
    np.testing.assert_allclose(merged.basis.eigenvalues.numpy(), first.basis.eigenvalues.numpy(), rtol=1e-9)
    other = job(workdir, "other", task={}, **{})
    other = other.model_copy(update={"backbone": other.backbone.model_copy(update={"img_size": 56})})
    with pytest.raises(ValueError, match="another backbone, weights, img_size"):
        merge_partials(other, parts)
    twice = merge_partials(job(workdir, "merged"), parts + parts[:2])  # a chunk given twice counts once
    assert twice.basis.count == first.basis.count
    with pytest.raises(ValueError, match="merge solves the main PCA only"):
        merge_partials(job(workdir, "merged", task={"foreground": {"threshold": 0.0}}), parts)


def test_max_samples_is_an_explicit_cap_in_whole_images(workdir, photos):
    out = fit_pca(job(workdir, "capped", extract={"max_samples": 200}), progress=False)
    assert out.meta["totals"]["patches"] == 256 and out.meta["totals"]["images"] == 4  # ⌈200 / 64⌉ images


def test_videos_stream_per_file_with_a_stride_and_resume_without_double_counting(workdir, photos, capsys):
    from PIL import Image

    from prism.tasks.features.media import write_video

    (workdir / "videos").mkdir()
    clips = {"a.mp4": photos[:9], "b.mp4": photos[9:]}  # 9 and 5 frames
    for name, frames in clips.items():
        write_video((np.asarray(Image.open(p).convert("RGB").resize((96, 64))) for p in frames),
                    workdir / "videos" / name, fps=9)
    cfg = job(workdir, "video", data={"source": "video", "root": str(workdir / "videos"),
                                      "video": {"frame_stride": 2}})
    out = fit_pca(cfg, progress=False)
    assert out.meta["totals"] == {"images": 5 + 3, "patches": 8 * 64, "videos": 2}  # frames 0,2,4,6,8 and 0,2,4
    assert len(list((cfg.task.output / PARTIALS).glob("main-*"))) == 2  # one chunk per video
    again = fit_pca(cfg, progress=False)
    assert "2 of 2 chunk(s) read back" in capsys.readouterr().out
    assert again.meta["totals"] == out.meta["totals"]
    np.testing.assert_allclose(again.basis.eigenvalues.numpy(), out.basis.eigenvalues.numpy(), rtol=1e-12)
    by_fps = fit_pca(job(workdir, "video-fps", data={"source": "video", "root": str(workdir / "videos"),
                                                     "video": {"fps": 3}}), progress=False)
    assert by_fps.meta["totals"]["images"] == 3 + 2  # every 3rd frame of 9 fps video: 0,3,6 and 0,3


def test_published_model_serves_renders_through_the_registry(workdir, photos, whole):
    import io

    from PIL import Image

    from prism.inference.predictor import load_predictor

    cfg, out = whole
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"model_name": "photos-pca"})})
    publish_features(cfg, out)
    assert out.model_version == "1" and out.run_id
    pred = load_predictor("models:/photos-pca@champion", device="cpu")
    results = pred.predict([str(p) for p in photos[:3]], options={"outputs": ["png", "npy"]})
    render = np.asarray(Image.open(io.BytesIO(results[0]["render"].data)))
    assert render.shape[:2] == Image.open(photos[0]).size[::-1]
    maps = np.load(io.BytesIO(results[0]["components"].data))
    assert maps.shape == (8, 8, K)
    # the standardised components of the fitted collection have unit variance
    ref = bare_patch_features(cfg, photos)
    z = (ref - out.basis.mean.numpy()) @ out.basis.components.numpy().T / np.sqrt(out.basis.eigenvalues.numpy())
    np.testing.assert_allclose((z ** 2).mean(0) * len(z) / (len(z) - 1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(maps.reshape(-1, K), z[:64], atol=2e-3)


@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")
def test_serve_config_answers_renders_and_refuses_bad_images(workdir, photos, whole):
    """serve_configs/features.yaml as shipped (model, port and store swapped) over real HTTP: a photograph →
    its render at its own size and the raw maps on request; bad input → the classifier's 4xx."""
    import base64
    import io

    import requests
    from PIL import Image
    from ray import serve

    from prism.serve import run_local
    from prism.tracking.store import default_tracking_uri
    from tests.conftest import ROOT
    from tests.helpers.ray_procs import free_port

    uri = default_tracking_uri(workdir)
    try:
        url = run_local(ROOT / "serve_configs" / "features.yaml", model_uri="models:/photos-pca@champion",
                        tracking_uri=uri, host="127.0.0.1", port=free_port(), blocking=False)
        with open(photos[1], "rb") as f:
            r = requests.post(f"{url}/predict", files={"image": ("p.jpg", f, "image/jpeg")},
                              data={"outputs": ["png", "npy"], "side_by_side": "true"}, timeout=60)
        assert r.status_code == 200, r.text
        (result,) = r.json()
        render = Image.open(io.BytesIO(base64.b64decode(result["render"]["base64"])))
        w, h = Image.open(photos[1]).size
        assert render.size == (2 * w, h)  # input | render
        maps = np.load(io.BytesIO(base64.b64decode(result["components"]["base64"])))
        assert maps.shape == (8, 8, K)
        bad = requests.post(f"{url}/predict", files={"image": ("x.png", b"not an image", "image/png")}, timeout=60)
        assert 400 <= bad.status_code < 500, bad.text
        wrong = requests.post(f"{url}/predict", files={"image": ("p.png", photos[0].read_bytes(), "image/jpeg")},
                              data={"start": "9"}, timeout=60)
        assert wrong.status_code == 400 and "not among the 10 kept" in wrong.text, wrong.text
    finally:
        serve.shutdown()


def test_cli_runs_the_shipped_job_and_renders_a_video(workdir, photos, capsys):
    """``prism features pca jobs/faces_pca.yaml`` (on the photographs, registered) then ``prism features
    render`` of a video and the images, in this process (the module's Ray)."""
    from PIL import Image

    from prism.cli.main import main
    from prism.tasks.features.media import read_video_frames, write_video
    from tests.conftest import ROOT

    args = [f"data.root={workdir / 'photos'}", f"task.output={workdir / 'cli'}", "tracking.model_name=cli-pca"]
    assert main(["features", "pca", str(ROOT / "jobs" / "faces_pca.yaml"), *args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "PCA of 896 patches from 14 images" in printed and "models:/cli-pca/1" in printed
    frames = [np.asarray(Image.open(p).convert("RGB").resize((64, 48))) for p in photos[:4]]
    write_video(iter(frames), workdir / "in.mp4", fps=4)
    out = workdir / "renders"
    assert main(["features", "render", "--model", "models:/cli-pca@champion", str(workdir / "in.mp4"),
                 str(workdir / "photos" / "china"), "--out", str(out), "--n", "1", "--device", "cpu"]) == 0
    video = list(read_video_frames(out / "in.pca.mp4"))
    assert len(video) == 4 and video[0].shape == (48, 128, 3)  # input | render
    assert len(list(out.glob("*.pca.png"))) == 7
    grey = np.asarray(Image.open(out / "full.pca.png"))
    assert np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() == 0  # n=1: grey


def test_lora_from_a_registered_model_extracts_its_adapted_features(workdir, photos):
    """``task.lora_from``: the PCA of the source model's adapted backbone (LoRA merged), exact against a
    plain loop over that backbone, unlike the base backbone's; the features bundle rebuilds it."""
    from prism.inference.bundle import load_bundle
    from prism.inference.predictor import load_predictor
    from tests.helpers.bundles import IMG_SIZE, fabricate_bundle

    source = fabricate_bundle(workdir / "source", seed=3)  # circles job, tiny conv backbone, random LoRA B
    _, _, src_model = load_bundle(source, merge=True)
    raw = {"backbone": {"name": src_model.backbone.name, "img_size": IMG_SIZE}}
    plain = job(workdir, "base", **raw)
    adapted = job(workdir, "adapted", task={"lora_from": str(source)}, **raw)
    base_out, out = fit_pca(plain, progress=False), fit_pca(adapted, progress=False)
    rows = bare_patch_features(adapted, photos, backbone=src_model.backbone)
    # the reference merges the LoRA in its own model: float32 features ~1e-7 apart, eigenvalues ~1e-6
    assert_matches(out.basis, rows, rtol=1e-5)
    cos = np.abs((out.basis.components.numpy()[:3] * base_out.basis.components.numpy()[:3]).sum(1))
    assert cos.min() < 0.99, cos  # the LoRA changed the features
    pred = load_predictor(str(out.bundle), device="cpu")
    assert pred.cfg.lora is not None and pred.cfg.task.lora_from == str(source)
    (result,) = pred.predict([str(photos[0])], options={"outputs": ["npy"]})
    import io

    maps = np.load(io.BytesIO(result["components"].data))
    n = maps.shape[0] * maps.shape[1]
    z = (rows[:n] - out.basis.mean.numpy()) @ out.basis.components.numpy().T / np.sqrt(out.basis.eigenvalues.numpy())
    np.testing.assert_allclose(maps.reshape(n, -1), z, atol=2e-3)
    wrong = job(workdir, "wrong", task={"lora_from": str(source)})
    with pytest.raises(ValueError, match="adapts backbone"):
        fit_pca(wrong, progress=False)


def test_foreground_pass_fits_the_patches_past_the_threshold(workdir, photos, whole):
    cfg0, first = whole
    rows = bare_patch_features(cfg0, photos)
    z0 = (rows - first.basis.mean.numpy()) @ first.basis.components.numpy()[0] / np.sqrt(
        first.basis.eigenvalues.numpy()[0])
    # last in the module: it reuses the folder of `whole` (its main pass is read back), bundle included
    for i, invert in enumerate((False, True)):
        cfg = job(workdir, "whole", task={"foreground": {"threshold": 0.25, "invert": invert}})
        out = fit_pca(cfg, progress=False)
        keep = rows[z0 < 0.25] if invert else rows[z0 > 0.25]
        assert out.foreground.count == len(keep) == out.meta["totals"]["foreground_patches"]
        assert_matches(out.foreground, keep)
        assert len(list((cfg.task.output / PARTIALS).glob("foreground-*"))) == 4 * (i + 1)  # own fingerprint
    with pytest.raises(ValueError, match="left 0 patch"):
        fit_pca(job(workdir, "whole", task={"foreground": {"threshold": 1e6}}), progress=False)
