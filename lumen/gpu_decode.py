"""Batched JPEG decode on the GPU (nvJPEG through torchvision), preprocessed as open_clip does.

Each item's decoder is chosen from its header alone (`plan_decode`):

    GPU  an 8-bit baseline or extended-sequential JPEG (SOF0/SOF1) with 1 or 3 YCbCr
         components, within the pixel limit, whose EXIF orientation could be read
    CPU  everything else, decoded by Pillow (draft mode) exactly as before: PNG, HEIC,
         progressive JPEG (torchvision hands it to nvJPEG's host Huffman decoder, one image at
         a time under one global lock, while Pillow's draft mode decodes it at 1/8 scale on
         every core), CMYK/YCCK or Adobe-RGB JPEGs, 12-bit, lossless or arithmetic coding, a
         pixel count over the limit (Pillow refuses it with the usual error), an EXIF block
         we cannot read, an orientation given only in XMP

nvJPEG ignores EXIF orientation, so the decoded tensor is turned upright here with the same
eight transposes Pillow's `exif_transpose` applies. A JPEG the GPU decoder refuses falls
back to Pillow by itself and never fails its batch. File bytes are read into one pinned host
buffer per batch. Resizing keeps open_clip's eval semantics (shorter side to the input size
with the same interpolation and antialiasing, centre crop), in float, clamped and rounded to
whole levels as Pillow's 8-bit resize is. The same code runs with device "cpu"
(libjpeg-turbo) so unit tests compare it with the Pillow path on machines without a GPU.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

log = logging.getLogger(__name__)

# SOF markers: which coding processes exist, and which of them nvJPEG decodes on the GPU.
_SOF_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
_SOF_ON_GPU = {0xC0, 0xC1}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
# Same-size images are resized together, in slices of at most this many float32 bytes.
_RESIZE_SLICE_BYTES = 512 * 1024**2
# One nvJPEG call decodes at most this many bytes of RGB pixels (28 12 MP photos), so a chunk
# of 256 phone photos never holds 9 GB of decoded pixels on the GPU at once.
_DECODE_SLICE_BYTES = 1024**3


class DecodeRoute(StrEnum):
    """Which decoder an item gets."""

    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class JpegInfo:
    """What a JPEG's markers up to its first scan say about it."""

    sof: int
    precision: int
    width: int
    height: int
    component_ids: tuple[int, ...]
    adobe_transform: int | None  # APP14 "Adobe" colour transform; 0 means RGB or CMYK
    orientation: int | None  # EXIF orientation; None: an EXIF block we cannot read
    xmp_orientation: bool  # an XMP packet names tiff:Orientation (Pillow falls back to it)


@dataclass(frozen=True)
class DecodePlan:
    """The route for one item and why; `orientation` turns a GPU-decoded image upright."""

    route: DecodeRoute
    reason: str
    orientation: int = 1
    stored_hw: tuple[int, int] = (0, 0)  # height, width as stored (before orientation)


def read_jpeg_info(data: bytes | memoryview) -> JpegInfo | None:
    """Parse the markers before the first scan, or None if this is no well-formed JPEG."""
    if bytes(data[:3]) != b"\xff\xd8\xff":
        return None
    pos, size = 2, len(data)
    exif: bytes | None = None
    xmp_orientation = False
    adobe: int | None = None
    frame: tuple[int, int, int, int, tuple[int, ...]] | None = None
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF or marker in _STANDALONE:
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = bytes(data[pos + 4 : pos + 2 + length])
        if length < 2 or len(body) != length - 2:
            return None
        if marker == 0xDA:
            break
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and exif is None:
            exif = body[6:]  # Pillow reads the first EXIF block only
        elif marker == 0xE1 and body.startswith(_XMP_HEADER):
            xmp_orientation = xmp_orientation or b"tiff:Orientation" in body
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        elif marker in _SOF_MARKERS and frame is None and len(body) >= 6:
            count = body[5]
            ids = tuple(body[6 + 3 * i] for i in range(count) if 6 + 3 * i < len(body))
            frame = (body[0], int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"),
                     marker, ids)  # fmt: skip
        pos += 2 + length
    if frame is None:
        return None
    precision, width, height, sof, ids = frame
    orientation = 1 if exif is None else exif_orientation(exif)
    return JpegInfo(sof, precision, width, height, ids, adobe, orientation, xmp_orientation)


def exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of IFD0 in a TIFF-structured EXIF block (1 if absent), or None."""
    if tiff[:2] not in (b"II", b"MM") or len(tiff) < 8:
        return None
    order: Any = "little" if tiff[:2] == b"II" else "big"

    def num(at: int, width: int) -> int:
        return int.from_bytes(tiff[at : at + width], order)

    ifd = num(4, 4)
    if num(2, 2) != 42 or ifd + 2 > len(tiff):
        return None
    entries = num(ifd, 2)
    if ifd + 2 + 12 * entries > len(tiff):
        return None
    for i in range(entries):
        at = ifd + 2 + 12 * i
        if num(at, 2) != 0x0112:
            continue
        kind, count = num(at + 2, 2), num(at + 4, 4)
        if count != 1 or kind not in (3, 4):  # SHORT or LONG, one value
            return None
        return num(at + 8, 2 if kind == 3 else 4)
    return 1


def plan_decode(head: bytes | memoryview, max_pixels: int) -> DecodePlan:
    """Choose the GPU or the CPU (Pillow) decoder for one file from its bytes."""
    info = read_jpeg_info(head)
    if info is None:
        return DecodePlan(DecodeRoute.CPU, "not a JPEG nvJPEG can parse")
    if info.sof not in _SOF_ON_GPU:
        return DecodePlan(DecodeRoute.CPU, f"JPEG coding SOF{info.sof - 0xC0} (not baseline)")
    if info.precision != 8:
        return DecodePlan(DecodeRoute.CPU, f"{info.precision}-bit JPEG")
    if len(info.component_ids) not in (1, 3):
        return DecodePlan(DecodeRoute.CPU, f"{len(info.component_ids)}-component JPEG (CMYK)")
    if info.adobe_transform == 0 or info.component_ids == (0x52, 0x47, 0x42):  # "RGB"
        return DecodePlan(DecodeRoute.CPU, "RGB-coded JPEG")
    if info.width * info.height == 0 or info.width * info.height > max_pixels:
        return DecodePlan(DecodeRoute.CPU, "pixel count out of range (Pillow reports it)")
    if info.orientation is None:
        return DecodePlan(DecodeRoute.CPU, "unreadable EXIF block")
    if info.orientation == 1 and info.xmp_orientation:  # EXIF says nothing, XMP might
        return DecodePlan(DecodeRoute.CPU, "orientation only in XMP")
    orientation = info.orientation if 2 <= info.orientation <= 8 else 1
    return DecodePlan(DecodeRoute.GPU, "baseline JPEG", orientation, (info.height, info.width))


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF `orientation` to a [..., H, W] tensor as Pillow's `exif_transpose` does."""
    hw = (-2, -1)
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(hw)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, hw)
    if orientation == 7:
        return image.transpose(-2, -1).flip(hw)
    if orientation == 8:
        return image.rot90(1, hw)
    return image


class UnsupportedPreprocess(ValueError):
    """The model's eval transform has a step the tensor pipeline does not reproduce."""


_PASS_THROUGH = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb"}


@dataclass(frozen=True)
class PreprocessSpec:
    """open_clip's eval transform as tensor operations: resize, centre crop, normalise."""

    resize: list[int]  # torchvision semantics: [n] = shorter side to n, [h, w] = exactly
    interpolation: T.InterpolationMode
    max_size: int | None
    antialias: bool
    crop: list[int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_transform(cls, transform: Any) -> PreprocessSpec:
        """Read a `Compose([Resize, CenterCrop?, <to RGB tensor>..., Normalize])`."""
        steps = list(getattr(transform, "transforms", [transform]))
        resize, crop, norm = None, None, None
        for step in steps:
            name = getattr(step, "__name__", type(step).__name__)
            if type(step) is T.Resize and resize is None and crop is None:
                resize = step
            elif type(step) is T.CenterCrop and resize is not None and crop is None:
                crop = step
            elif type(step) is T.Normalize and norm is None and step is steps[-1]:
                norm = step
            elif name not in _PASS_THROUGH:
                raise UnsupportedPreprocess(f"preprocessing step {step!r} has no GPU version")
        if resize is None or norm is None:
            raise UnsupportedPreprocess(f"no Resize ... Normalize in {transform!r}")
        size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
        return cls(
            resize=size,
            interpolation=resize.interpolation,
            max_size=resize.max_size,
            antialias=resize.antialias is not False,
            crop=list(crop.size) if crop is not None else None,
            mean=tuple(float(m) for m in norm.mean),
            std=tuple(float(s) for s in norm.std),
        )

    def apply(self, images: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Upright uint8 [3, H, W] images (one device) to normalised [3, h, w] `dtype` tensors."""
        if not images:
            return []
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for shape, indices in by_size.items():
            per_slice = max(1, _RESIZE_SLICE_BYTES // (4 * shape[0] * shape[1] * shape[2]))
            for start in range(0, len(indices), per_slice):
                part = indices[start : start + per_slice]
                batch = torch.stack([images[i] for i in part]).float()
                batch = F.resize(
                    batch, self.resize, self.interpolation, self.max_size, self.antialias
                )
                if self.crop is not None:
                    batch = F.center_crop(batch, self.crop)
                for i, crop in zip(part, batch.clamp_(0, 255).round_(), strict=True):
                    out[i] = crop
        stacked = torch.stack([t for t in out if t is not None])
        mean = torch.tensor(self.mean, device=stacked.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=stacked.device).view(1, -1, 1, 1) * 255
        return list(stacked.sub_(mean).div_(std).to(dtype).unbind(0))


def gpu_decode_device(model_device: str, enabled: bool) -> str | None:
    """The device to decode JPEGs on for a model on `model_device`, or None (Pillow only)."""
    if enabled and model_device.startswith("cuda") and torch.cuda.is_available():
        return model_device
    return None


Decoded = torch.Tensor | Exception
MaybeImage = torch.Tensor | None  # a decoded uint8 [3, H, W] image, or None where decoding failed
Fallback = Callable[[bytes], torch.Tensor]


class BatchDecoder:
    """Decodes a batch of files: JPEGs batched on `device`, the rest by `fallback` on threads."""

    def __init__(
        self,
        spec: PreprocessSpec,
        *,
        device: str,
        dtype: torch.dtype,
        max_pixels: int,
        fallback: Fallback,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.max_pixels = max_pixels
        self.fallback = fallback
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        self._pin = device.startswith("cuda")
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lumen-decode")

    def decode(self, sources: Sequence[Path | bytes]) -> list[Decoded]:
        """One tensor (or the exception that explains why not) per source, in order."""
        buffers = self._host_buffers(sources)
        results: list[Decoded | Future[torch.Tensor]] = []
        on_gpu: list[tuple[int, torch.Tensor, DecodePlan]] = []
        for i, buffer in enumerate(buffers):
            if isinstance(buffer, Exception):
                results.append(buffer)
                continue
            plan = plan_decode(buffer.numpy().data, self.max_pixels)
            if plan.route is DecodeRoute.GPU:
                on_gpu.append((i, buffer, plan))
                results.append(RuntimeError("not decoded"))  # replaced below
            else:
                results.append(self._pool.submit(self.fallback, buffer.numpy().tobytes()))
        for part in _slices(on_gpu, _DECODE_SLICE_BYTES):
            decoded = self._decode_jpegs([(buffer, plan.stored_hw) for _, buffer, plan in part])
            ready: list[tuple[int, torch.Tensor]] = []
            for (i, buffer, plan), image in zip(part, decoded, strict=True):
                if image is None:  # refused by the GPU decoder: Pillow decides
                    results[i] = self._pool.submit(self.fallback, buffer.numpy().tobytes())
                else:
                    ready.append((i, upright(image, plan.orientation)))
            tensors = self.spec.apply([image for _, image in ready], self.dtype)
            for (i, _), tensor in zip(ready, tensors, strict=True):
                results[i] = tensor
        return [_settle(r) for r in results]

    def _host_buffers(self, sources: Sequence[Path | bytes]) -> list[torch.Tensor | Exception]:
        """Each source's bytes as a 1-D uint8 view of one (pinned, with CUDA) host buffer."""
        sizes: list[int | Exception] = []
        for source in sources:
            try:
                sizes.append(len(source) if isinstance(source, bytes) else os.stat(source).st_size)
            except OSError as exc:
                sizes.append(exc)
        total = sum(s for s in sizes if isinstance(s, int))
        arena = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=self._pin)
        flat = arena.numpy()
        out: list[torch.Tensor | Exception] = []
        offset = 0
        for source, size in zip(sources, sizes, strict=True):
            if isinstance(size, Exception):
                out.append(size)
                continue
            view = arena[offset : offset + size]
            try:
                if isinstance(source, bytes):
                    flat[offset : offset + size] = np.frombuffer(source, dtype=np.uint8)
                else:
                    _read_exactly(source, flat[offset : offset + size].data)
                out.append(view)
            except OSError as exc:
                out.append(exc)
            offset += size
        return out

    def _decode_jpegs(self, jpegs: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[MaybeImage]:
        """Decode in one batch; if the batch fails, one by one (None: this one failed)."""
        if not jpegs:
            return []
        try:
            return _checked(jpegs, self._decode([buffer for buffer, _ in jpegs]))
        except RuntimeError as exc:
            log.info("batched JPEG decode failed (%s); decoding one by one", exc)
        out: list[MaybeImage] = []
        for jpeg in jpegs:
            try:
                out.extend(_checked([jpeg], self._decode([jpeg[0]])))
            except RuntimeError:
                out.append(None)
        return out

    def _decode(self, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image decoders
            return list(decode_jpeg(buffers, mode=ImageReadMode.RGB, device=self.device))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _slices(
    jpegs: list[tuple[int, torch.Tensor, DecodePlan]], max_bytes: int
) -> list[list[tuple[int, torch.Tensor, DecodePlan]]]:
    """Consecutive groups whose decoded RGB pixels stay within `max_bytes` (at least one each)."""
    groups: list[list[tuple[int, torch.Tensor, DecodePlan]]] = []
    total = max_bytes
    for jpeg in jpegs:
        height, width = jpeg[2].stored_hw
        size = 3 * height * width
        if total + size > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(jpeg)
        total += size
    return groups


def _checked(
    jpegs: list[tuple[torch.Tensor, tuple[int, int]]], images: list[torch.Tensor]
) -> list[MaybeImage]:
    """Each decoded image, or None where its shape disagrees with its header."""
    return [
        image if tuple(image.shape) == (3, *hw) else None
        for (_, hw), image in zip(jpegs, images, strict=True)
    ]


def _read_exactly(path: Path, into: memoryview) -> None:
    with open(path, "rb") as handle:
        got = handle.readinto(into)
    if got != len(into):
        raise OSError(f"{path}: read {got} of {len(into)} bytes (the file changed)")


def _settle(result: Decoded | Future[torch.Tensor]) -> Decoded:
    if not isinstance(result, Future):
        return result
    try:
        return result.result()
    except Exception as exc:  # noqa: BLE001 - reported per item
        return exc
