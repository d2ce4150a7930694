"""Image loading shared by every vision stage: always RGB uint8, or a clear error.

CMYK, greyscale, palette, 16-bit and alpha images are converted, not rejected; unreadable or
truncated files raise ImageError with the reason.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Truncated files must fail loudly rather than be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An image that cannot be used; str(error) is the reason."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully and return it as 8-bit RGB, in its stored orientation (EXIF rotation
    is not applied, so every stage and every box agrees on the same pixel grid)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"missing image file {path}")
    try:
        with Image.open(path) as im, _truncated_images_refused():
            im.load()
            return to_rgb(im)
    except Image.DecompressionBombError as e:
        raise ImageError(f"unusable image {path}: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"unreadable image {path}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"unreadable image {path}: {e}") from None


class ImageMemo:
    """The images of one folder, each decoded once however many records name it; a file that
    cannot be used is remembered with its reason (each record naming it is rejected with it)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._images: dict[str, Image.Image] = {}
        self._unusable: dict[str, str] = {}

    def get(self, name: str) -> tuple[Image.Image | None, str | None]:
        """(image, None), or (None, the reason it cannot be used)."""
        if name not in self._images and name not in self._unusable:
            try:
                self._images[name] = load_rgb(self.root / name)
            except ImageError as error:
                self._unusable[name] = str(error)
        return self._images.get(name), self._unusable.get(name)


@contextmanager
def _truncated_images_refused():
    """PIL's LOAD_TRUNCATED_IMAGES off while an image decodes: a library may set the process-wide
    flag (lmms-eval does on import), and a truncated file must be rejected, not padded with grey."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; 16/32-bit greyscale is scaled down to 8 bits, not clipped."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit data scale by the 16-bit range; only wider data fall back to the image's own maximum
        hi = 65535.0 if im.mode.startswith("I;16") or float(arr.max()) <= 65535.0 else float(arr.max())
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def image_stem(image: str) -> str:
    return Path(image).stem
