"""An uploaded image checked and decoded for the model: its pixel count read from the header before any pixel
is decoded (Pillow's bomb check, at serve's own --max-pixels), then decoded as predict decodes a file."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.folders import probe, unreadable_reason
from ..inference import Classifier


class Refused(Exception):
    """A request the server answers with `status` and the one-line message, never a traceback."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def decode_request_image(classifier: Classifier, data: bytes, name: str, max_pixels: int,
                         mirror: bool) -> tuple[np.ndarray, ...]:
    """The views of one uploaded image for the model (Classifier.decode_views, as predict decodes a file), or
    Refused: 413 past `max_pixels`, 422 for what is not an image or does not decode."""
    if not data:
        raise Refused(422, f"{name}: empty; send an image file")
    try:
        (width, height), _ = probe(data)
    except Image.DecompressionBombError as e:  # past twice Pillow's limit Pillow refuses the header itself
        raise Refused(413, f"{name}: {unreadable_reason(e)} (more than --max-pixels {max_pixels:,})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for what is not an image
        reason = unreadable_reason(e)
        raise Refused(422, f"{name}: {reason}" if reason.startswith("not an image") else
                      f"{name}: not an image ({reason})") from None
    if width * height > max_pixels:
        raise Refused(413, f"{name}: {width} x {height} px is {width * height:,} pixels, more than --max-pixels "
                           f"{max_pixels:,}; send a smaller image")
    try:
        return classifier.decode_views(data, mirror)
    except Image.DecompressionBombError as e:  # a header that lied about the size, caught by Pillow itself
        raise Refused(413, f"{name}: {unreadable_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - a damaged file fails in Pillow's decoders with many types
        raise Refused(422, f"{name}: a damaged image ({type(e).__name__}: {unreadable_reason(e)})") from None
