"""The batched (GPU) decode path, run on the CPU: routing, orientation, fallback, fidelity.

torchvision's `decode_jpeg` runs the same code with device "cpu" (libjpeg-turbo), so the
tensor path is compared with the Pillow path the Embedder uses today. Tolerances are in
8-bit levels (0..255) of the un-normalised pixels:

- without draft mode both paths resize the same decoded pixels with the same (antialiased
  bicubic) filter; the only difference is where 8-bit rounding happens: at most 1 level.
- the Embedder's Pillow path decodes JPEGs in draft mode (DCT-domain downscaling to >= the
  model's side) before resizing, the tensor path decodes full size. On photo-like images
  that shifts a pixel by about 1 level on average (measured 0.4-1.3) and rarely more than a
  few (99th percentile 2-4, largest 8), so the bounds are a mean of 2 and a 99th percentile
  of 6; a wrong rotation or a wrong normalisation is off by tens of levels.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from lumen.config import Settings
from lumen.errors import InvalidUpload
from lumen.gpu_decode import (
    BatchDecoder,
    DecodeRoute,
    PreprocessSpec,
    UnsupportedPreprocess,
    gpu_decode_device,
    plan_decode,
    upright,
)
from lumen.ingest.images import open_image
from lumen.worker import EmbedderCore
from tests.support.hostile import make_heic, make_jpeg, make_png
from tests.support.tiny_clip import default_cache_dir, ensure_tiny_clip

SIDE = 224
TRANSFORM = open_clip.image_transform(SIDE, is_train=False)
SPEC = PreprocessSpec.from_transform(TRANSFORM)
STD_LEVELS = torch.tensor(SPEC.std).view(3, 1, 1) * 255
MAX_PIXELS = 89_478_485


def photo(size: tuple[int, int], seed: int = 0, **save: object) -> bytes:
    """A photo-like JPEG: smooth colour fields, texture and noise (not a flat test card)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.BICUBIC
    )
    texture = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8))
    pixels = np.asarray(base, np.float32) * 0.7
    pixels += np.asarray(texture.resize((w, h), Image.BILINEAR), np.float32) * 0.3
    pixels += rng.standard_normal((h, w, 3)).astype(np.float32) * 5
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=92, **save)
    return out.getvalue()


def pillow_tensor(data: bytes, draft: bool = True) -> torch.Tensor:
    """What the Embedder's Pillow path makes of `data` (draft mode as the worker asks)."""
    img = open_image(data, max_pixels=MAX_PIXELS, draft_size=(SIDE, SIDE) if draft else None)
    return TRANSFORM(img)


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel difference of two normalised tensors in 8-bit levels."""
    return (a.float() - b.float()).abs() * STD_LEVELS


def decoder(
    fallback: Callable[[bytes], torch.Tensor] = pillow_tensor,
    dtype: torch.dtype = torch.float32,
    cls: type[BatchDecoder] = BatchDecoder,
) -> BatchDecoder:
    return cls(SPEC, device="cpu", dtype=dtype, max_pixels=MAX_PIXELS, fallback=fallback, threads=2)


def jpeg_header(
    sof: int = 0xC0, precision: int = 8, ids: tuple[int, ...] = (1, 2, 3), extra: bytes = b""
) -> bytes:
    """SOI, optional segments, a frame header and an empty scan: enough for the router."""
    frame = struct.pack(">BHHB", precision, 48, 64, len(ids))
    frame += b"".join(struct.pack(">BBB", i, 0x11, 0) for i in ids)
    segment = b"\xff" + bytes([sof]) + struct.pack(">H", len(frame) + 2) + frame
    return b"\xff\xd8" + extra + segment + b"\xff\xda\x00\x02\xff\xd9"


def app(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


# ---- routing -----------------------------------------------------------------------


def test_a_baseline_jpeg_goes_to_the_gpu_with_its_exif_orientation() -> None:
    plan = plan_decode(make_jpeg(size=(64, 48), orientation=6), MAX_PIXELS)
    assert plan.route is DecodeRoute.GPU
    assert plan.orientation == 6 and plan.stored_hw == (48, 64)


def _cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (32, 32), (10, 200, 30, 0)).save(out, "JPEG")
    return out.getvalue()


def _xmp_rotated_jpeg() -> bytes:
    out = io.BytesIO()
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    Image.new("RGB", (40, 20), (1, 2, 3)).save(out, "JPEG", xmp=xmp)
    return out.getvalue()


ROUTED_TO_PILLOW: dict[str, Callable[[], bytes]] = {
    "png": make_png,
    "heic": make_heic,
    "progressive jpeg": lambda: photo((64, 48), progressive=True),
    "cmyk jpeg": _cmyk_jpeg,
    "12-bit jpeg": lambda: jpeg_header(precision=12),
    "lossless jpeg": lambda: jpeg_header(sof=0xC3),
    "arithmetic-coded jpeg": lambda: jpeg_header(sof=0xC9),
    "rgb-coded jpeg": lambda: jpeg_header(ids=(0x52, 0x47, 0x42)),
    "adobe rgb jpeg": lambda: jpeg_header(extra=app(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00")),
    "unreadable exif": lambda: jpeg_header(extra=app(0xE1, b"Exif\x00\x00II*\x00\xff\xff")),
    "orientation only in xmp": _xmp_rotated_jpeg,
    "truncated header": lambda: make_jpeg()[:40],
}


@pytest.mark.parametrize("case", sorted(ROUTED_TO_PILLOW))
def test_what_nvjpeg_cannot_do_well_goes_to_pillow(case: str) -> None:
    plan = plan_decode(ROUTED_TO_PILLOW[case](), MAX_PIXELS)
    assert plan.route is DecodeRoute.CPU, plan


def test_a_jpeg_over_the_pixel_limit_goes_to_pillow_which_refuses_it() -> None:
    assert plan_decode(make_jpeg(size=(64, 48)), 64 * 48 - 1).route is DecodeRoute.CPU
    assert plan_decode(make_jpeg(size=(64, 48)), 64 * 48).route is DecodeRoute.GPU


def test_pillow_really_reads_the_xmp_orientation_the_router_avoids() -> None:
    assert open_image(_xmp_rotated_jpeg(), max_pixels=MAX_PIXELS).size == (20, 40)


def test_the_gpu_path_is_off_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_decode_device("cuda", enabled=True) is None
    assert gpu_decode_device("cpu", enabled=True) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_decode_device("cuda:0", enabled=True) == "cuda:0"
    assert gpu_decode_device("cuda:0", enabled=False) is None


# ---- orientation and preprocessing ---------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_pixels_exactly_as_pillows_exif_transpose(orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = io.BytesIO()
    Image.fromarray(pixels).save(stored, "PNG", exif=exif.tobytes())  # lossless, with EXIF
    expected = np.asarray(open_image(stored.getvalue(), max_pixels=MAX_PIXELS))
    turned = upright(torch.from_numpy(pixels).permute(2, 0, 1), orientation)
    assert np.array_equal(turned.permute(1, 2, 0).numpy(), expected)


def test_the_spec_reads_open_clips_eval_transform() -> None:
    assert SPEC.resize == [SIDE] and SPEC.crop == [SIDE, SIDE] and SPEC.antialias
    assert SPEC.interpolation.value == "bicubic"
    assert SPEC.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_a_transform_without_a_tensor_version_is_refused() -> None:
    longest = open_clip.image_transform(SIDE, is_train=False, resize_mode="longest")
    with pytest.raises(UnsupportedPreprocess):
        PreprocessSpec.from_transform(longest)


@pytest.mark.parametrize("size", [(816, 612), (612, 816), (300, 200)])
def test_tensor_path_equals_pillow_resize_within_one_level_without_draft(
    size: tuple[int, int],
) -> None:
    data = photo(size, seed=size[0])
    [tensor] = decoder().decode([data])
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, SIDE, SIDE)
    assert float(levels(tensor, pillow_tensor(data, draft=False)).max()) <= 1.01


@pytest.mark.parametrize("size", [(816, 612), (2000, 1500)])
def test_tensor_path_is_close_to_the_workers_draft_mode_pillow_path(
    size: tuple[int, int],
) -> None:
    data = photo(size, seed=size[1])
    [tensor] = decoder().decode([data])
    assert isinstance(tensor, torch.Tensor)
    diff = levels(tensor, pillow_tensor(data))
    assert float(diff.mean()) <= 2.0 and float(diff.flatten().quantile(0.99)) <= 6.0


def test_an_exif_rotated_jpeg_comes_out_upright_like_pillows() -> None:
    data = photo((640, 360), seed=7, exif=_orientation_exif(6))
    assert plan_decode(data, MAX_PIXELS).orientation == 6
    [tensor] = decoder().decode([data])
    assert isinstance(tensor, torch.Tensor)
    assert float(levels(tensor, pillow_tensor(data)).mean()) <= 2.0
    unrotated = photo((640, 360), seed=7)  # same pixels, no orientation: far off
    assert float(levels(tensor, pillow_tensor(unrotated)).mean()) > 10.0


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_fp16_output_for_an_fp16_model() -> None:
    [tensor] = decoder(dtype=torch.float16).decode([photo((320, 240))])
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float16


# ---- fallback, per item --------------------------------------------------------------


def _corrupt_jpeg() -> bytes:
    data = photo((320, 240), seed=3)
    return data[: len(data) // 2]  # header intact, half the scan data gone


def test_a_corrupt_jpeg_falls_back_to_pillow_and_fails_alone() -> None:
    seen: list[bytes] = []

    def recording(data: bytes) -> torch.Tensor:
        seen.append(data)
        return pillow_tensor(data)

    good, bad, png = photo((320, 240), seed=1), _corrupt_jpeg(), make_png(size=(300, 260))
    assert plan_decode(bad, MAX_PIXELS).route is DecodeRoute.GPU  # only decoding tells
    out = decoder(recording).decode([good, bad, png, good])
    assert isinstance(out[0], torch.Tensor) and isinstance(out[3], torch.Tensor)
    assert isinstance(out[1], InvalidUpload)  # Pillow's verdict, as on the CPU path
    assert isinstance(out[2], torch.Tensor) and out[2].shape == (3, SIDE, SIDE)
    assert sorted(seen) == sorted([bad, png])  # the good JPEGs never touched Pillow


class RefusesLargeJpegs(BatchDecoder):
    """A GPU decoder that refuses some files Pillow reads (as nvJPEG does some real ones)."""

    def _decode(self, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        if any(b.numel() > 20_000 for b in buffers):
            raise RuntimeError("nvjpeg: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")
        return super()._decode(buffers)


def test_a_jpeg_the_gpu_refuses_is_decoded_by_pillow_instead() -> None:
    small, large = photo((200, 150), seed=2), photo((900, 700), seed=4)
    assert len(small) < 20_000 < len(large)
    out = decoder(cls=RefusesLargeJpegs).decode([small, large])
    assert all(isinstance(t, torch.Tensor) for t in out)
    assert float(levels(out[1], pillow_tensor(large)).max()) == 0.0  # Pillow's own tensor
    assert float(levels(out[0], pillow_tensor(small)).mean()) <= 2.0


class CountsCalls(BatchDecoder):
    calls: list[int]

    def _decode(self, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        self.calls = [*getattr(self, "calls", []), len(buffers)]
        return super()._decode(buffers)


def test_a_large_chunk_decodes_in_slices_of_bounded_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lumen.gpu_decode._DECODE_SLICE_BYTES", 2 * 3 * 320 * 240)
    blobs = [photo((320, 240), seed=i) for i in range(5)]
    counting = decoder(cls=CountsCalls)
    out = counting.decode(blobs)
    assert isinstance(counting, CountsCalls) and counting.calls == [2, 2, 1]
    [alone] = decoder().decode(blobs[4:])
    assert isinstance(out[4], torch.Tensor) and torch.equal(out[4], alone)


def test_a_missing_file_fails_alone(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(photo((320, 240)))
    out = decoder().decode([tmp_path / "gone.jpg", good])
    assert isinstance(out[0], FileNotFoundError) and isinstance(out[1], torch.Tensor)


# ---- the Embedder's core -------------------------------------------------------------


@pytest.fixture(scope="module")
def cores(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmbedderCore, EmbedderCore]:
    tiny = ensure_tiny_clip(default_cache_dir())
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), model=tiny.model_settings())
    return EmbedderCore(settings, "cpu", threads=1), EmbedderCore(
        settings, "batched", threads=1, decode_device="cpu"
    )


def test_on_a_cpu_only_machine_the_core_has_no_batch_decoder(
    cores: tuple[EmbedderCore, EmbedderCore],
) -> None:
    plain, _ = cores
    assert plain.model.device == "cpu" and plain.batch_decoder is None


def test_the_core_decodes_a_chunk_per_item_and_embeds_mixed_batches(
    cores: tuple[EmbedderCore, EmbedderCore],
) -> None:
    plain, batched = cores
    folder = Path(batched.settings.data_dir) / "uploads" / "alice"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"a.jpg": photo((400, 300)), "b.png": make_png(), "c.jpg": _corrupt_jpeg()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    items = [f"uploads/alice/{n}" for n in [*files, "gone.jpg"]]
    for core in (plain, batched):
        a, b, c, gone = core.decode_many("alice", items)
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        assert isinstance(c, InvalidUpload) and isinstance(gone, Exception)
        assert core.failure("alice", items[2], c).permanent
        assert core.failure("alice", items[3], gone).permanent
        vectors, _ = core.embed_checked([a, b])
        assert vectors.shape == (2, core.dim)
    jpeg = [core.decode_many("alice", items[:1])[0] for core in cores]
    # The tiny model sees 32 px, so Pillow drafts this JPEG at 1/8 scale (50x38): coarser.
    assert float(levels(jpeg[0], jpeg[1]).mean()) <= 4.0
