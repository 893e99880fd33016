"""Decoding and resizing images (image lists, TFDS datasets of variable image size)."""

from __future__ import annotations

import numpy as np

from pipeline.core.stage import PipelineError


def fit_image(image: np.ndarray, shape, origin: str) -> np.ndarray:
    """A decoded uint8 image [h, w(, c)] as uint8 [H, W, C] of `shape`.

    Grayscale and RGB convert into each other (PIL's "L" / "RGB" modes); the image is
    resized with PIL's bilinear filter (antialiased when shrinking) if its size
    differs. Deterministic, so reruns write the same bytes.

    Raises:
      PipelineError: naming `origin` for an image that is not 2-D / 3-D with 1, 3 or
        4 channels.
    """
    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise PipelineError(f"{origin}: unsupported image shape {array.shape}")
    return _pil_to_array(Image.fromarray(array), shape)


def _pil_to_array(img, shape) -> np.ndarray:
    from PIL import Image

    height, width, channels = (int(d) for d in shape)
    img = img.convert("RGB" if channels == 3 else "L")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(height, width, channels)


def load_image(path: str, shape) -> np.ndarray:
    """Decodes an image file (JPEG, PNG, ... anything PIL reads) as uint8 `shape`.

    Raises:
      PipelineError: naming the file if it is missing or cannot be decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # Decodes now, so a truncated file fails here.
            return _pil_to_array(img, shape)
    except FileNotFoundError as e:
        raise PipelineError(f"{path}: image file not found") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports undecodable data as OSError (UnidentifiedImageError, "image file
        # is truncated"), and some format errors as ValueError / SyntaxError.
        raise PipelineError(f"{path}: cannot decode image: {e}") from e


def check_channels(shape, origin: str) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 1:
        raise PipelineError(
            f"{origin}: config.data.image_shape = {shape}; expected (H, W, C) with C 1 or 3"
        )
    return shape
