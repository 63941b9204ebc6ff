"""Reading images back in tests: cv2 answers None for a file or buffer it cannot read, which is a failure here."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_image(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"cannot read an image from {path}"
    return image


def decode_jpeg(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert image is not None, f"cannot decode {len(data)} bytes as an image"
    return image
