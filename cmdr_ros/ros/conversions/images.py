"""sensor_msgs/Image and CompressedImage <-> NumPy: every encoding cv_bridge and image_transport define for
colour, mono, Bayer, YUV 4:2:2 and depth (REP 118), jpeg/png/tiff and compressedDepth."""
from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from cmdr_ros.ros.conversions.common import (ConversionError, byte_buffer, payload_bytes, sized_buffer,
                                             with_byte_order)

# ROS Bayer pattern -> OpenCV code, as cv_bridge's getConversionCodes maps BAYER_RGGB etc. to RGB. OpenCV names
# a pattern by the two pixels at row 1, columns 1-2, so ROS rggb is OpenCV "BG" (alias COLOR_BayerRGGB2RGB).
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
# YUV 4:2:2, 2 bytes per pixel: yuv422 is the old name of uyvy (U Y0 V Y1), yuv422_yuy2 of yuyv (Y0 U Y1 V).
_YUV422_TO_RGB = {
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
}
_CV_TO_RGB = {f"bayer_{p}{bits}": code for p, code in _BAYER_TO_RGB.items() for bits in (8, 16)} | _YUV422_TO_RGB

# Channels holding R, G, B. The generic OpenCV types are read in OpenCV's layout, as cv_bridge's
# cvtColorForDisplay reads them: 8UC1 mono, 8UC3/16UC3 BGR, 8UC4/16UC4 BGRA. (cv_bridge's cvtColor refuses
# them, "not a color format"; cv_bridge's cv2_to_imgmsg(image) with its default "passthrough" publishes them.)
_RGB, _BGR, _GREY = (0, 1, 2), (2, 1, 0), (0, 0, 0)
_RGB_CHANNELS: dict[str, tuple[int, int, int]] = {
    "rgb8": _RGB, "rgba8": _RGB, "rgb16": _RGB, "rgba16": _RGB,
    "bgr8": _BGR, "bgra8": _BGR, "bgr16": _BGR, "bgra16": _BGR,
    "8UC3": _BGR, "8UC4": _BGR, "16UC3": _BGR, "16UC4": _BGR,
    "mono8": _GREY, "mono16": _GREY, "8UC1": _GREY,
}

# encoding -> (little-endian base dtype, channels). 16UC1 depth is in mm, 32FC1 depth in m (REP 118).
_DECODABLE: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "rgb16": ("<u2", 3), "bgr16": ("<u2", 3), "rgba16": ("<u2", 4), "bgra16": ("<u2", 4),
    "mono8": ("u1", 1), "mono16": ("<u2", 1),
    "8UC1": ("u1", 1), "8UC3": ("u1", 3), "8UC4": ("u1", 4), "16UC3": ("<u2", 3), "16UC4": ("<u2", 4),
    **{f"bayer_{p}8": ("u1", 1) for p in _BAYER_TO_RGB},
    **{f"bayer_{p}16": ("<u2", 1) for p in _BAYER_TO_RGB},
    **{enc: ("u1", 2) for enc in _YUV422_TO_RGB},
    "16UC1": ("<u2", 1),
    "32FC1": ("<f4", 1),
}
_ENCODABLE = ("rgb8", "bgr8", "mono8", "mono16", "32FC1")


# --------------------------------------------------------------------------------------------- images
def image_to_array(msg: Image) -> np.ndarray:
    """Raw pixels of a sensor_msgs/Image: HxWxC (colour) or HxW (mono, Bayer mosaic, depth) in the native dtype.

    uint8 for 8-bit encodings, uint16 for 16-bit ones (16UC1: depth in mm), float32 for 32FC1 (depth in m);
    channel order as in the encoding; YUV 4:2:2 as HxWx2 bytes. Honours ``step`` and ``is_bigendian``.
    """
    if msg.encoding not in _DECODABLE:
        raise ConversionError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(_DECODABLE)})"
        )
    base, channels = _DECODABLE[msg.encoding]
    dtype = with_byte_order(base, bool(msg.is_bigendian))
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ConversionError(f"Image is empty (width={width}, height={height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError(
            f"Image step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({msg.encoding})"
        )
    buf = sized_buffer(msg.data, step * height, "Image data", "step*height")
    view = np.ndarray(
        shape=(height, width, channels),
        dtype=dtype,
        buffer=buf,
        strides=(step, channels * dtype.itemsize, dtype.itemsize),
    )
    out = view.astype(dtype.newbyteorder("="), order="C")
    return out[..., 0] if channels == 1 else out


def _depth_to_grey(depth: np.ndarray) -> np.ndarray:
    """Min-max stretch of the valid (finite, > 0) depths to 0..255; invalid pixels are 0. Display only."""
    depth = depth.astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    grey = np.zeros(depth.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = depth[valid].min(), depth[valid].max()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        grey[valid] = np.round((depth[valid] - lo) * scale).astype(np.uint8)
    return grey


def image_to_rgb(msg: Image) -> np.ndarray:
    """A sensor_msgs/Image as uint8 HxWx3 RGB, for the 2D branch and for display.

    Colour encodings are reordered (alpha dropped); mono is replicated to 3 channels; Bayer mosaics are
    demosaiced (OpenCV bilinear) and YUV 4:2:2 converted (BT.601) with cv_bridge's OpenCV codes. 16-bit
    data keeps its high byte (``>> 8``). 16UC1/32FC1 depth images are min-max stretched over their valid
    (finite, > 0) pixels to 8-bit grey, invalid pixels black: a picture for display, not a measurement.
    """
    return _pixels_to_rgb(image_to_array(msg), msg.encoding)


def _pixels_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """``image_to_rgb`` of pixels laid out as ``image_to_array`` returns them for ``encoding``."""
    if encoding in ("16UC1", "32FC1"):
        return np.repeat(_depth_to_grey(pixels)[..., None], 3, axis=2)
    if encoding in _YUV422_TO_RGB and pixels.shape[1] % 2:
        raise ConversionError(f"{encoding} image has odd width {pixels.shape[1]}: 4:2:2 pixels come in pairs")
    if encoding in _CV_TO_RGB:
        rgb = cv2.cvtColor(pixels, _CV_TO_RGB[encoding])
    else:
        rgb = pixels.reshape(*pixels.shape[:2], -1)[..., list(_RGB_CHANNELS[encoding])]
    return (rgb >> 8 if rgb.dtype == np.uint16 else rgb).astype(np.uint8, copy=False)


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """A NumPy array as a little-endian, unpadded sensor_msgs/Image.

    rgb8/bgr8 take uint8 HxWx3 already in that channel order (the caller passes BGR for bgr8);
    mono8 uint8 HxW; mono16 uint16 HxW; 32FC1 any float HxW (stored as float32).
    """
    if encoding not in _ENCODABLE:
        raise ConversionError(
            f"cannot encode images as '{encoding}' (supported: {', '.join(_ENCODABLE)})"
        )
    arr = np.asarray(arr)
    base, channels = _DECODABLE[encoding]
    target = np.dtype(base)
    expected_ndim = 3 if channels > 1 else 2
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        want = "HxWx3" if channels > 1 else "HxW"
        raise ConversionError(f"array of shape {arr.shape} cannot be encoded as {encoding} ({want} needed)")
    dtype_ok = np.issubdtype(arr.dtype, np.floating) if encoding == "32FC1" else arr.dtype == target
    if not dtype_ok:
        raise ConversionError(f"array of dtype {arr.dtype} cannot be encoded as {encoding} ({target.name} needed)")
    height, width = arr.shape[:2]
    msg = Image()
    msg.header = header if header is not None else Header()
    msg.height, msg.width, msg.encoding = int(height), int(width), encoding
    msg.is_bigendian = 0
    msg.step = int(width * channels * target.itemsize)
    msg.data = payload_bytes(arr.astype(target, copy=False))
    return msg


# ------------------------------------------------------------------------------------- compressed images
_CODECS = ("jpeg", "jpg", "png", "tiff")
# sensor_msgs image_encodings::isColor: compressed_image_transport converts these to bgr8/bgr16 before encoding
_COLOUR = {"rgb8", "rgba8", "rgb16", "rgba16", "bgr8", "bgra8", "bgr16", "bgra16", "nv12", "nv21", "nv24",
           *_YUV422_TO_RGB}
# compressed_depth_image_transport's ConfigHeader before the PNG: int32 format (INV_DEPTH), float32 depthParam[2]
_DEPTH_HEADER = np.dtype([("format", "<i4"), ("depth_param", "<f4", (2,))])
_RVL_MAX_PIXELS = 1 << 26  # an RVL size beyond any depth camera (67 Mpx) is a corrupt header, not an allocation


def compressed_image_to_rgb(msg: CompressedImage) -> np.ndarray:
    """A sensor_msgs/CompressedImage as uint8 HxWx3 RGB, with the contract of ``image_to_rgb``.

    ``format`` as image_transport writes it: ``"<encoding>; <jpeg|png|tiff> compressed [<bgr8|rgb8|bgr16..>]"``
    (compressed_image_transport), ``"<16UC1|32FC1>; compressedDepth [png]"`` (compressed_depth_image_transport),
    or a bare ``"jpeg"``/``"png"`` (older publishers, cv_bridge's toCompressedImageMsg): 1 channel is mono,
    3 BGR, 4 BGRA. A corrupt payload or an unknown format is a ConversionError.
    """
    return _pixels_to_rgb(*_decode_compressed(msg))


def _decode_compressed(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """The payload as ``image_to_array`` would give it, and the encoding that layout has."""
    fmt = str(msg.format)
    encoding, sep, rest = (part.strip() for part in fmt.partition(";"))
    words = rest.split()
    if sep and words[:1] == ["compressedDepth"]:
        return _decode_compressed_depth(msg, encoding, words[1:]), encoding
    if not sep:
        codec = encoding  # a bare "jpeg"
    else:
        codec = words[0] if words[1:2] == ["compressed"] else ""
    if codec.lower() not in _CODECS:
        raise ConversionError(f"unsupported CompressedImage format '{fmt}' (expected '<encoding>; "
                              f"<{'|'.join(_CODECS)}> compressed ...', '<encoding>; compressedDepth' or a bare codec)")
    pixels = _imdecode(byte_buffer(msg.data), fmt)
    if not sep or encoding in _COLOUR:
        # colour was converted to bgr (or, with ROS 1's color_space rgb, to rgb) before encoding
        return pixels, _layout_encoding(pixels, "rgb" if "compressed rgb" in rest else "bgr", fmt)
    if encoding not in _DECODABLE:
        raise ConversionError(f"unsupported image encoding '{encoding}' in CompressedImage format '{fmt}'")
    base, channels = _DECODABLE[encoding]
    if pixels.dtype != np.dtype(base) or (pixels.shape[2] if pixels.ndim == 3 else 1) != channels:
        raise ConversionError(f"CompressedImage '{fmt}' decodes to {pixels.shape} {pixels.dtype}, "
                              f"{encoding} has {channels} channel(s) of {np.dtype(base).name}")
    return pixels, encoding


def _imdecode(buf: np.ndarray, fmt: str) -> np.ndarray:
    """cv2.imdecode, refusing a JPEG cut before its end-of-image marker (which OpenCV 4 returns half grey)."""
    if bytes(buf[:2]) == b"\xff\xd8" and not buf.tobytes().rstrip(b"\0").endswith(b"\xff\xd9"):
        raise ConversionError(f"CompressedImage '{fmt}' holds a JPEG of {buf.size} bytes without its end marker: "
                              "truncated")
    try:
        pixels = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except cv2.error:
        pixels = None
    if pixels is None:
        raise ConversionError(f"CompressedImage payload of {buf.size} bytes cannot be decoded as '{fmt}' "
                              "(corrupt or truncated)")
    return pixels


def _layout_encoding(pixels: np.ndarray, order: str, fmt: str) -> str:
    """The encoding of a decoded colour or mono image: mono8/16, bgr8/16, bgra8/16 (rgb* for ``order`` rgb)."""
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    bits = {np.dtype(np.uint8): "8", np.dtype(np.uint16): "16"}.get(pixels.dtype)
    if bits is None or channels not in (1, 3, 4):
        raise ConversionError(f"CompressedImage '{fmt}' decodes to {channels} channel(s) of {pixels.dtype}, "
                              "expected 1, 3 or 4 of uint8 or uint16")
    return "mono" + bits if channels == 1 else order + "a" * (channels == 4) + bits


def _decode_compressed_depth(msg: CompressedImage, encoding: str, codec: list[str]) -> np.ndarray:
    """compressedDepth payload: the 12-byte header, then a 16-bit PNG or RVL image of depth (16UC1) or of quantized
    inverse depth (32FC1: ``z = a / (q - b)`` with a, b from the header, q = 0 -> NaN), as its subscriber decodes it
    (compressed_depth_image_transport's codec.cpp)."""
    fmt = str(msg.format)
    if encoding not in ("16UC1", "32FC1") or codec not in ([], ["png"], ["rvl"]):
        raise ConversionError(f"unsupported compressedDepth format '{fmt}' (16UC1 or 32FC1, png or rvl)")
    buf = byte_buffer(msg.data)
    if buf.size <= _DEPTH_HEADER.itemsize:
        raise ConversionError(f"compressedDepth payload has {buf.size} bytes, not even its "
                              f"{_DEPTH_HEADER.itemsize}-byte header and an image")
    header = buf[: _DEPTH_HEADER.itemsize].view(_DEPTH_HEADER)[0]
    body = buf[_DEPTH_HEADER.itemsize:]
    q = decode_rvl(body, fmt) if codec == ["rvl"] else _imdecode(body, fmt)
    if q.dtype != np.uint16 or q.ndim != 2:
        raise ConversionError(f"compressedDepth '{fmt}' decodes to {q.shape} {q.dtype}, expected one uint16 channel")
    if encoding == "16UC1":
        return q
    a, b = header["depth_param"]
    with np.errstate(divide="ignore"):
        return np.where(q > 0, a / (q.astype(np.float32) - b), np.float32(np.nan)).astype(np.float32)


def decode_rvl(body: np.ndarray, fmt: str = "compressedDepth rvl") -> np.ndarray:
    """uint16 HxW of an RVL-coded image as compressed_depth_image_transport writes it (after its 12-byte header):
    uint32 width and height, then Wilson's RVL stream in little-endian 32-bit words, read from each word's high
    nibble down. Every number in it is one variable-length code (3 value bits per nibble, low bits first, the 4th
    bit set when more follow), so all codes are read at once; the stream is runs of (zeros, nonzeros, then each
    nonzero value as the zig-zag coded difference to the previous nonzero value). A stream that does not describe
    exactly width x height pixels is a ConversionError."""
    body = np.asarray(body, dtype=np.uint8)
    if body.size < 8:
        raise ConversionError(f"'{fmt}' payload of {body.size} bytes has no RVL size (8 bytes)")
    width, height = (int(v) for v in body[:8].view("<u4"))
    n = width * height
    words = body[8: 8 + (body.size - 8) // 4 * 4].view("<u4")
    if n == 0 or n > _RVL_MAX_PIXELS:
        raise ConversionError(f"'{fmt}' reports a {width}x{height} image: malformed (at most {_RVL_MAX_PIXELS} "
                              "pixels)")
    nibbles = ((words[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF).astype(np.int64).ravel()
    last = np.flatnonzero(nibbles < 8)  # the final nibble of each code
    if not len(last):
        raise ConversionError(f"'{fmt}' payload holds no complete RVL code")
    nibbles = nibbles[: last[-1] + 1]
    first = np.r_[0, last[:-1] + 1]
    position = np.arange(len(nibbles)) - np.repeat(first, last - first + 1)
    if position.max() > 10:  # the encoder's 32-bit int takes at most 11 nibbles
        raise ConversionError(f"'{fmt}' payload holds an RVL code of {position.max() + 1} nibbles: malformed")
    codes = np.add.reduceat((nibbles & 7) << (3 * position), first)
    # the run structure: a Python step per run of zeros + nonzeros (0.6 s for 46 000 runs, a 1920x1200 image with
    # 2 % isolated invalid pixels, on 2 shared cores), the values vectorised
    seq, total = codes.tolist(), len(codes)  # plain ints: the run loop is Python's
    zeros, nonzeros, starts = [], [], []
    at = done = 0
    while done < n:
        if at + 2 > total:
            raise ConversionError(f"'{fmt}' RVL stream ends after {done} of {width}x{height} pixels")
        z, nz = seq[at], seq[at + 1]
        if at + 2 + nz > total:
            raise ConversionError(f"'{fmt}' RVL stream ends after {done + z} of {width}x{height} pixels")
        if done + z + nz > n:
            raise ConversionError(f"'{fmt}' RVL stream describes more than its {width}x{height} pixels: malformed")
        zeros.append(z)
        nonzeros.append(nz)
        starts.append(at + 2)
        done += z + nz
        at += 2 + nz
    zeros, nonzeros, starts = (np.array(col, dtype=np.int64) for col in (zeros, nonzeros, starts))
    marks = np.zeros(len(codes) + 1, np.int64)  # +1 where a run's values start, -1 after them
    np.add.at(marks, starts, 1)
    np.add.at(marks, starts + nonzeros, -1)
    positive = codes[np.cumsum(marks[:-1]) > 0]
    deltas = (positive >> 1) ^ -(positive & 1)
    values = (np.cumsum(deltas) & 0xFFFF).astype(np.uint16)  # 16-bit wrap-around, as the C++ decoder's uint16_t
    nonzero = np.repeat(np.tile([False, True], len(starts)), np.stack([zeros, nonzeros], axis=1).ravel())
    out = np.zeros(n, np.uint16)
    out[nonzero] = values
    return out.reshape(height, width)


# ------------------------------------------------------------------------------------------ depth images
def depth_image_to_metres(msg: Image | CompressedImage) -> np.ndarray:
    """HxW float32 depth in metres of a 16UC1 (mm) or 32FC1 (m) image, raw or compressed (compressedDepth or
    png); invalid depths (0, negative, NaN, inf) are 0."""
    if isinstance(msg, CompressedImage):
        pixels, encoding = _decode_compressed(msg)
    else:
        pixels, encoding = image_to_array(msg), msg.encoding
    if encoding not in ("16UC1", "32FC1"):
        raise ConversionError(f"'{encoding}' is not a depth image (REP 118: 16UC1 in mm or 32FC1 in m)")
    z = pixels * 0.001 if encoding == "16UC1" else pixels.astype(np.float64)
    return np.where(np.isfinite(z) & (z > 0), z, 0.0).astype(np.float32)
