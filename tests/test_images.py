"""The "appareil photo" analogy: fewer bits, fewer levels, more error."""

import numpy as np
import pytest

from qlora_lab.course.images import image_report, load_sample_image, psnr, quantize_image, synthetic_image


@pytest.fixture(scope="module")
def picture():
    return load_sample_image(max_size=64)


def test_sample_image_is_rgb_float_in_unit_range(picture):
    assert picture.ndim == 3 and picture.shape[2] == 3
    assert max(picture.shape[:2]) <= 64
    assert picture.dtype == np.float32 and 0.0 <= picture.min() and picture.max() <= 1.0


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantized_picture_has_at_most_two_to_the_bits_levels(bits):
    img = synthetic_image(64)
    q = quantize_image(img, bits)
    assert len(np.unique(q)) <= 2**bits
    assert np.abs(q - img).max() <= 0.5 / (2**bits - 1) + 1e-6  # rounding error <= half a step


def test_32_bits_is_the_original():
    img = synthetic_image(32)
    assert np.array_equal(quantize_image(img, 32), img)


def test_error_grows_as_bits_shrink(picture):
    rows = image_report(picture, (32, 8, 4, 2))
    assert [r.bits for r in rows] == [32, 8, 4, 2]
    mses = [r.mse for r in rows]
    assert mses == sorted(mses) and mses[-1] > mses[-2] > 0
    assert rows[0].psnr_db == np.inf
    assert rows[2].levels_used <= 16 and rows[3].levels_used <= 4
    assert rows[0].size_kib == pytest.approx(4 * rows[1].size_kib)


def test_psnr_of_known_error():
    a = np.zeros((4, 4))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)


@pytest.mark.parametrize("bad", [0, 17])
def test_bad_bits_raise(bad):
    with pytest.raises(ValueError, match="bits"):
        quantize_image(synthetic_image(8), bad)
