"""Image arrays of any dtype are converted by one documented rule or refused by name, never silently black."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from prism.config import JobConfig
from prism.data.images import array_to_uint8, decode_image, read_bytes
from prism.engine.inputs import to_model_input
from prism.inference.predictor import Predictor
from prism.tasks.multihead.task import MultiHeadTask
from tests.helpers.models import Normalisation

SIZE = 14


@pytest.mark.parametrize(("array", "expected"), [
    (np.array([[[0, 128, 255]]], np.uint8), [0, 128, 255]),
    (np.array([[[0.0, 0.5, 1.0]]], np.float32), [0, 128, 255]),       # floats in [0, 1]: × 255, rounded
    (np.array([[[0.0, 0.2, 1.0]]], np.float64), [0, 51, 255]),
    (np.array([[[0.0, 0.5, 1.0]]], np.float16), [0, 128, 255]),
    (np.array([[[0, 128, 255]]], np.int64), [0, 128, 255]),            # integers within 0..255: exact cast
    (np.array([[[0, 7, 255]]], np.uint16), [0, 7, 255]),
])
def test_conversion_rule(array, expected):
    out = array_to_uint8(array)
    assert out.dtype == np.uint8 and out.shape == array.shape and out.ravel().tolist() == expected


@pytest.mark.parametrize(("array", "message"), [
    (np.array([[[0.0, 100.0, 200.0]]], np.float32), r"img\.png: float images must lie in \[0, 1\], got dtype "
                                                     r"float32 with range \[0\.0, 200\.0\]; divide 0\.\.255"),
    (np.array([[[-0.5, 0.0, 1.0]]], np.float64), r"float64 with range \[-0\.5, 1\.0\]"),
    (np.array([[[np.nan, 0.0, 1.0]]], np.float32), r"float images must lie in \[0, 1\]"),
    (np.array([[[0, 1000, 65535]]], np.uint16), r"img\.png: integer images of dtype uint16 must lie in 0\.\.255, "
                                                r"got range \[0, 65535\]; scale them"),
    (np.array([[[-1, 0, 255]]], np.int64), r"int64 must lie in 0\.\.255, got range \[-1, 255\]"),
    (np.array([[[True, False, True]]]), r"img\.png: image arrays of dtype bool are not supported; pass uint8"),
])
def test_refused_arrays_name_dtype_range_and_fix(array, message):
    with pytest.raises(ValueError, match=message):
        array_to_uint8(array, "img.png")



class MeanColour(nn.Module):
    """``{"image": (B, 3, S, S)}`` → ``{"shade": (B, 2)}``: logits ``(-m, m)`` of the mean normalised pixel ``m``."""

    def __init__(self):
        super().__init__()
        self.backbone = Normalisation()

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = inputs["image"].mean(dim=(1, 2, 3))
        return {"shade": torch.stack([-m, m], dim=-1)}


@pytest.fixture
def predictor() -> Predictor:
    cfg = JobConfig.model_validate({
        "task": {"name": "multihead", "heads": [{"name": "shade", "classes": ["dark", "light"]}]},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "backbone": {"name": "dinov2_tiny", "img_size": SIZE},
    })
    return Predictor(cfg, MultiHeadTask(cfg), MeanColour())


def test_predictor_scales_float_arrays_in_unit_range(predictor):
    rng = np.random.default_rng(0)
    unit = rng.uniform(0.6, 1.0, (20, 20, 3)).astype(np.float32)  # a light image, as floats in [0, 1]
    as_uint8 = np.rint(unit.astype(np.float64) * 255).astype(np.uint8)
    pixels = predictor.prepare(unit)[0]["image"]  # the model input the task's preprocess makes
    np.testing.assert_array_equal(pixels, predictor.prepare(as_uint8)[0]["image"])
    assert pixels.min() > 140  # light, not cast to 0 (black)
    result = predictor.predict([unit, as_uint8], tta=False)
    assert [r["shade"]["prediction"] for r in result] == ["light", "light"]
    assert result[0]["shade"]["probabilities"] == result[1]["shade"]["probabilities"]


def test_predictor_refuses_float_arrays_outside_unit_range_by_name(predictor):
    with pytest.raises(ValueError, match=r"photo: float images must lie in \[0, 1\].*range \[255\.0, 255\.0\]"):
        predictor.predict([np.full((20, 20, 3), 255.0, np.float32)], names=["photo"])


def test_model_input_takes_only_uint8():
    with pytest.raises(ValueError, match="expected uint8 images.*torch.float32.*array_to_uint8"):
        to_model_input(torch.rand(1, SIZE, SIZE, 3), (0.5,) * 3, (0.5,) * 3)


def test_float_and_16_bit_pil_images_keep_their_brightness(predictor, tmp_path):
    # PIL's convert("RGB") clips wide modes: a float "F" image in [0, 1] turns black, a 16-bit one white
    grey = predictor.prepare(Image.fromarray(np.full((20, 20), 0.5, np.float32)))[0]["image"]
    assert grey.ravel().tolist() == [128] * grey.size
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 32768], [65535, 257]], np.uint16)).save(path)
    decoded = np.asarray(decode_image(read_bytes(str(path)), str(path)))
    assert decoded.shape == (2, 2, 3) and decoded[..., 0].tolist() == [[0, 128], [255, 1]]
