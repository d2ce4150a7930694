"""load_rgb: every usable mode becomes 8-bit RGB with known pixels; unusable files raise ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from groundflow.vision.image_io import ImageError, image_stem, load_rgb


def _pixels(path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def _cmyk_to_rgb(c, m, y, k):
    """Pillow's naive CMYK conversion: channel = (255 - k) * (255 - ink) / 255, rounded."""
    return tuple(round((255 - k) * (255 - v) / 255) for v in (c, m, y))


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(tmp_path, fmt):
    image = Image.new("CMYK", (16, 8), (0, 255, 0, 0))
    image.paste((10, 20, 30, 40), (0, 0, 8, 8))
    path = tmp_path / f"cmyk.{fmt.lower()}"
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(path) as on_disk:
        assert on_disk.mode == "CMYK"
    rgb = _pixels(path)
    assert rgb.shape == (8, 16, 3)
    assert _cmyk_to_rgb(10, 20, 30, 40) == (207, 198, 190)
    # flat blocks survive JPEG exactly away from the block edge
    assert tuple(rgb[4, 2]) == (207, 198, 190)
    assert tuple(rgb[4, 13]) == (255, 0, 255)


def test_greyscale_l(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 7, 128, 255]], dtype=np.uint8)).save(path)
    rgb = _pixels(path)
    assert rgb.tolist() == [[[0, 0, 0], [7, 7, 7], [128, 128, 128], [255, 255, 255]]]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    values = np.array([[0, 257, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as on_disk:
        assert on_disk.mode == "I;16"
    rgb = _pixels(path)
    # v * 255 / 65535, rounded half up: a clip to 8 bits would give 255 for all but 0
    assert rgb[..., 0].tolist() == [[0, 1, 128, 255, 4]]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.array([[[255, 0, 0, 128], [0, 0, 255, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    assert _pixels(path).tolist() == [[[255, 127, 127], [255, 255, 255], [10, 20, 30]]]


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    image.save(path)
    assert _pixels(path).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_rgb_round_trip_is_exact(tmp_path):
    path = tmp_path / "rgb.png"
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(pixels).save(path)
    assert (_pixels(path) == pixels).all()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 3 // 5])
    with Image.open(path) as header_only:  # the header is intact: only a full decode finds it
        assert header_only.size == (64, 64)
    with pytest.raises(ImageError, match=rf"^unreadable image {path}: image file is truncated"):
        load_rgb(path)


def test_a_truncated_file_raises_even_when_a_library_allows_truncated_images(tmp_path, monkeypatch):
    """lmms-eval sets PIL's process-wide LOAD_TRUNCATED_IMAGES on import; our loader refuses anyway
    and leaves the flag as it found it."""
    from PIL import ImageFile

    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:1000])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="image file is truncated"):
        load_rgb(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_the_harness_imports_lmms_eval_without_changing_pil_truncation():
    from PIL import ImageFile

    from groundflow.evaluate.harness import _import_lmms_eval

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    _import_lmms_eval()
    import lmms_eval.api.task  # noqa: F401  (the module that sets the flag, imported by now)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file_raises(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=rf"^missing image file {path}$"):
        load_rgb(path)


def test_directory_is_reported_missing(tmp_path):
    with pytest.raises(ImageError, match="^missing image file"):
        load_rgb(tmp_path)


def test_not_an_image_raises(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am not a PNG")
    with pytest.raises(ImageError, match=rf"^unreadable image {path}: not a recognised image format$"):
        load_rgb(path)


def test_image_stem():
    assert image_stem("train2014/COCO_train2014_000000000009.jpg") == "COCO_train2014_000000000009"


def test_image_memo_decodes_each_file_once_and_remembers_why_one_is_unusable(tmp_path, monkeypatch):
    import groundflow.vision.image_io as image_io

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    calls = []
    real = image_io.load_rgb
    monkeypatch.setattr(image_io, "load_rgb", lambda path: calls.append(path) or real(path))
    memo = image_io.ImageMemo(tmp_path)
    for _ in range(3):
        image, problem = memo.get("ok.png")
        assert problem is None and image.getpixel((0, 0)) == (1, 2, 3)
        image, problem = memo.get("bad.png")
        assert image is None and problem.startswith(f"unreadable image {tmp_path / 'bad.png'}")
    assert len(calls) == 2
