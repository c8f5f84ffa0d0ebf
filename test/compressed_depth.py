"""Test-side encoder of sensor_msgs/CompressedImage depth as ROS's compressed_depth_image_transport publishes it
(its codec.cpp ``encodeCompressedDepthImage`` and rvl_codec.cpp ``CompressRVL``, written again in Python from their
documented behaviour): the reference the node's decoder is tested against."""
from __future__ import annotations

import struct

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage

# the publisher's defaults (compressed_depth_image_transport parameters depth_max, depth_quantization)
DEPTH_MAX, DEPTH_QUANTIZATION = 10.0, 100.0


def rvl_compress(image: np.ndarray) -> bytes:
    """uint16 HxW -> uint32 width, height, then CompressRVL's stream: per run the number of zeros, the number of
    nonzeros and each nonzero value's zig-zag delta to the previous one, every number a variable-length code of
    3-bit nibbles (low first, 0x8 = more), nibbles packed into 32-bit words from the high end, words little-endian."""
    words: list[int] = []
    word = count = 0

    def vle(value: int) -> None:
        nonlocal word, count
        while True:
            nibble = value & 0x7
            value >>= 3
            if value:
                nibble |= 0x8
            word = ((word << 4) | nibble) & 0xFFFFFFFF
            count += 1
            if count == 8:
                words.append(word)
                word = count = 0
            if not value:
                return

    flat = [int(v) for v in np.asarray(image, dtype=np.uint16).ravel()]
    i, previous = 0, 0
    while i < len(flat):
        zeros = 0
        while i < len(flat) and flat[i] == 0:
            i, zeros = i + 1, zeros + 1
        vle(zeros)
        nonzeros = 0
        while i + nonzeros < len(flat) and flat[i + nonzeros]:
            nonzeros += 1
        vle(nonzeros)
        for _ in range(nonzeros):
            current = flat[i]
            i += 1
            delta = current - previous
            vle(((delta << 1) ^ (delta >> 31)) & 0xFFFFFFFF)
            previous = current
    if count:
        words.append((word << 4 * (8 - count)) & 0xFFFFFFFF)
    h, w = image.shape
    return struct.pack("<II", w, h) + struct.pack(f"<{len(words)}I", *words)


def inverse_depth(depth_m: np.ndarray) -> tuple[np.ndarray, float, float]:
    """32FC1 metres -> (uint16 quantized inverse depth, a, b) as the publisher computes them in float32: q = a / z + b
    below depth_max, else (and NaN) 0."""
    z0, z_max = np.float32(DEPTH_QUANTIZATION), np.float32(DEPTH_MAX)
    a = z0 * (z0 + np.float32(1))
    b = np.float32(1) - a / z_max
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(depth_m < z_max, a / depth_m + b, 0).astype(np.uint16)
    return q, float(a), float(b)


def compressed_depth(depth: np.ndarray, codec: str = "png") -> CompressedImage:
    """A compressedDepth message of a uint16 (16UC1, mm) or float32 (32FC1, m) depth image, ``codec`` png or rvl."""
    if depth.dtype == np.uint16:
        encoding, q, a, b = "16UC1", depth, 0.0, 0.0
    else:
        encoding = "32FC1"
        q, a, b = inverse_depth(depth.astype(np.float32))
    if codec == "png":
        ok, data = cv2.imencode(".png", q, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        body = data.tobytes()
    else:
        body = rvl_compress(q)
    msg = CompressedImage(format=f"{encoding}; compressedDepth {codec}")
    msg.data = struct.pack("<iff", 0, a, b) + body  # ConfigHeader: format INV_DEPTH, depthParam[2]
    return msg
