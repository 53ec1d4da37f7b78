"""The patch-feature task without Ray: the extraction actor's statistics, out-of-memory back-off, the
foreground pass, the colour scale (no flicker), the artifact, options and errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from prism.config import load_config
from prism.engine.model import build_model
from prism.tasks import build_task
from prism.tasks.features.artifact import PCA_FILE, PCA_META_FILE, pca_from_bytes
from prism.tasks.features.extract import PatchStatsMapper
from prism.tasks.features.render import colourise, render_components
from prism.tasks.features.stats import PatchStats
from tests.helpers.photos import bare_patch_features, photo_collection


def job(**task):
    return load_config(raw={"task": {"name": "features", "components": 6, **task},
                            "backbone": {"name": "dinov2_tiny", "img_size": 56}, "lora": None, "stages": []})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_collection(tmp_path_factory.mktemp("photos"), crops=3)


def batch_of(cfg, paths):
    from prism.data.images import resize_rgb

    return {"image": np.stack([resize_rgb(Image.open(p).convert("RGB"), cfg.backbone.img_size) for p in paths]),
            "chunk": np.array([0] * (len(paths) // 2) + [1] * (len(paths) - len(paths) // 2))}


def stats_of_rows(out, i, dim):
    s = PatchStats(dim)
    s.n, s.mean, s.m2 = int(out["count"][i]), torch.from_numpy(out["mean"][i]), torch.from_numpy(out["m2"][i])
    return s


def test_actor_statistics_equal_a_bare_forward_loop_per_chunk(photos):
    cfg = job()
    mapper = PatchStatsMapper(cfg.model_dump(mode="json"), device="cpu")
    batch = batch_of(cfg, photos)
    out = mapper(batch)
    assert list(out["chunk"]) == [0, 1] and list(out["images"]) == [4, 4]
    ref = bare_patch_features(cfg, photos)  # (8·16, 48)
    half = 4 * 16
    for i, rows in enumerate((ref[:half], ref[half:])):
        got = stats_of_rows(out, i, 48)
        want = PatchStats.of(rows)
        assert got.n == want.n == half
        torch.testing.assert_close(got.mean, want.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.m2, want.m2, rtol=1e-4, atol=1e-3)
    whole = PatchStats.merged([stats_of_rows(out, 0, 48), stats_of_rows(out, 1, 48)])
    ref_pca = PCA(n_components=6, svd_solver="full").fit(ref)
    cos = np.abs((whole.pca(6).components.numpy() * ref_pca.components_).sum(1))
    assert cos.min() > 0.999, cos  # float32 forward passes in different batch sizes: close, not bit-equal


def test_out_of_memory_halves_the_batch_until_it_fits(photos, monkeypatch):
    import prism.tasks.features.extract as extract

    real = extract.patch_features
    seen = []

    def limited(backbone, images, device, amp=None):
        seen.append(len(images))
        if len(images) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(backbone, images, device, amp)

    cfg = job(extract={"batch_size": 8})
    mapper = PatchStatsMapper(cfg.model_dump(mode="json"), device="cpu")
    batch = batch_of(cfg, photos)
    monkeypatch.setattr(extract, "patch_features", limited)
    out = mapper(batch)
    assert seen[:3] == [8, 4, 2] and mapper.batch == 2 and set(out["batch"]) == {2}
    monkeypatch.setattr(extract, "patch_features", real)
    ref = PatchStatsMapper(cfg.model_dump(mode="json"), device="cpu")(batch)
    np.testing.assert_allclose(out["m2"], ref["m2"], rtol=1e-4, atol=1e-3)
    assert list(out["count"]) == list(ref["count"])


def test_other_errors_are_not_taken_for_out_of_memory(photos, monkeypatch):
    import prism.tasks.features.extract as extract

    def broken(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    cfg = job()
    mapper = PatchStatsMapper(cfg.model_dump(mode="json"), device="cpu")
    monkeypatch.setattr(extract, "patch_features", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        mapper(batch_of(cfg, photos))


def test_foreground_pass_keeps_the_patches_above_the_threshold(photos):
    cfg = job(foreground={"threshold": 0.3})
    ref = bare_patch_features(cfg, photos)
    main = PatchStats.of(ref).pca(6)
    from prism.tasks.features.artifact import pca_to_bytes

    mapper = PatchStatsMapper(cfg.model_dump(mode="json"), basis=pca_to_bytes(main, None, {}), device="cpu")
    out = mapper(batch_of(cfg, photos))
    got = PatchStats.merged([stats_of_rows(out, i, 48) for i in range(len(out["count"]))])
    z0 = ((ref - main.mean.numpy()) @ main.components.numpy()[0]) / np.sqrt(main.eigenvalues.numpy()[0])
    keep = ref[z0 > 0.3]
    assert 0 < got.n == len(keep) < len(ref)
    torch.testing.assert_close(got.mean, torch.from_numpy(keep.mean(0)), rtol=1e-4, atol=1e-4)


def test_colour_scale_is_fixed_by_the_eigenvalues_not_the_frame():
    """Identical component values give identical pixels whatever else is in the frame: no per-frame
    min-max scaling, so videos do not flicker."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4, 3)).astype(np.float32)
    b = a.copy()
    b[2:] = rng.normal(size=(2, 4, 3)) * 10  # the rest of the frame changes wildly
    ra, rb = colourise(a), colourise(b)
    np.testing.assert_array_equal(ra[:2], rb[:2])
    assert not np.array_equal(ra[2:], rb[2:])
    np.testing.assert_array_equal(colourise(np.zeros((1, 1, 3))), [[[128, 128, 128]]])
    np.testing.assert_array_equal(colourise(np.full((1, 1, 1), 2.5), n=1), [[[255, 255, 255]]])
    np.testing.assert_array_equal(colourise(np.full((1, 1, 2), -2.5), n=2), [[[0, 0, 128]]])
    big = render_components(a, size=(16, 16), upsample="patch")
    np.testing.assert_array_equal(big[::4, ::4], ra)  # patch cells are flat blocks of their colour
    assert render_components(a, size=(16, 16), upsample="smooth").shape == (16, 16, 3)


def test_render_options_are_checked():
    with pytest.raises(ValueError, match=r"\[2, 5\) are not in the 3 kept"):
        colourise(np.zeros((2, 2, 3)), start=2, n=3)
    with pytest.raises(ValueError, match="n must be 1, 2 or 3"):
        colourise(np.zeros((2, 2, 4)), n=4)


def test_artifact_carries_the_basis_and_metadata(photos):
    cfg = job(foreground={"threshold": 0.0})
    task = build_task(cfg)
    model = build_model(cfg, task)
    ref = bare_patch_features(cfg, photos)
    main = PatchStats.of(ref).pca(6)
    fg = PatchStats.of(ref[:50]).pca(6)
    task.set_basis(model, main, fg, {"totals": {"images": 8, "patches": len(ref)}})
    files = task.artifacts(model)
    assert set(files) == {PCA_FILE, PCA_META_FILE}
    basis, fg2, meta = pca_from_bytes(files)
    torch.testing.assert_close(basis.components, main.components.float().double())
    assert basis.count == len(ref) and fg2.count == 50
    assert meta["components_kept"] == 6 and meta["totals"]["patches"] == len(ref) and meta["fitted"]
    model2 = build_model(cfg, build_task(cfg))
    task2 = build_task(cfg)
    task2.load_artifacts(model2, files)
    x = {"image": torch.randn(2, 3, 56, 56)}
    for k, v in task.predictions(model.eval(), x).items():
        torch.testing.assert_close(task2.predictions(model2.eval(), x)[k], v)


def test_postprocess_gives_png_and_npy_and_refuses_a_missing_foreground():
    cfg = job()
    task = build_task(cfg)
    maps = torch.randn(4, 4, 6)
    opts = task.parse_options({"outputs": ["png", "npy"], "side_by_side": True})
    image = np.zeros((30, 40, 3), np.uint8)
    out = task.postprocess({"maps": maps}, {"size": [40, 30], "image": image}, opts)
    assert out["grid"] == [4, 4]
    png = np.asarray(Image.open(io.BytesIO(out["render"].data)))
    assert png.shape == (30, 80, 3)  # input | render
    np.testing.assert_array_equal(np.load(io.BytesIO(out["components"].data)), maps.numpy())
    with pytest.raises(ValueError, match="no foreground PCA"):
        task.postprocess({"maps": maps}, {}, task.parse_options({"foreground": True}))
    with pytest.raises(ValueError, match="not among the 6 kept"):
        task.postprocess({"maps": maps}, {}, task.parse_options({"start": 5}))


def test_a_features_job_reads_images_by_default_and_refuses_stages():
    from prism.config import ConfigError

    assert job().data.source == "images"
    with pytest.raises(ConfigError, match="does not train"):
        load_config(raw={"task": {"name": "features"}, "lora": None,
                         "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}]})
    with pytest.raises(ConfigError, match="reads images or video"):
        load_config(raw={"task": {"name": "features"}, "lora": None, "stages": [], "data": {"source": "csv"}})


def test_render_outputs_keep_folders_apart_so_equal_names_do_not_collide(tmp_path):
    from prism.tasks.features.media import output_names

    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "a" / "deep" / "y.png"]
    assert [str(p) for p in output_names(paths)] == ["a/x", "b/x", "a/deep/y"]
    assert [str(p) for p in output_names([tmp_path / "only.jpg"])] == ["only"]


def test_foreground_render_blacks_out_background_cells():
    cfg = job(foreground={"threshold": 0.0})
    task = build_task(cfg)
    fg = torch.tensor([[True, False], [False, True]])
    pred = {"maps": torch.randn(2, 2, 6), "fg_maps": torch.randn(2, 2, 6), "foreground": fg}
    opts = task.parse_options({"foreground": True, "upsample": "patch"})
    rgb = task.render_prediction(pred, (8, 8), opts)
    plain = task.render(pred["fg_maps"].numpy(), (8, 8), opts)
    assert (rgb[:4, 4:] == 0).all() and (rgb[4:, :4] == 0).all()  # background cells
    np.testing.assert_array_equal(rgb[:4, :4], plain[:4, :4])
    np.testing.assert_array_equal(rgb[4:, 4:], plain[4:, 4:])
