"""The wire format of a payload, and its exact length.

A payload (``dict[str, Tensor]``) is framed as::

    message := count:u16  entry*count
    entry   := name_len:u8  name:utf-8  dtype:u8  ndim:u8  dim:u32*ndim  data

All integers are little-endian; ``data`` is the tensor's elements in C order, little-endian,
``numel * element_size`` bytes. Entries keep the payload's key order. The framing of one entry
is therefore ``3 + len(name) + 4 * ndim`` bytes, and :func:`payload_nbytes` (which every
compressor's ``nbytes`` returns) equals ``len(serialize(payload))`` without serializing.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping

import torch

# Codes are part of the format: append, never renumber.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.uint8: 4,
    torch.int8: 5,
    torch.int16: 6,
    torch.int32: 7,
    torch.int64: 8,
    torch.bool: 9,
}
CODE_DTYPES: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}

_MAX_ENTRIES = 2**16 - 1
_MAX_DIM = 2**32 - 1


def _check_entry(name: str, t: torch.Tensor) -> bytes:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"payload entry {name!r} is a {type(t).__name__}, not a tensor")
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"payload entry {name!r} has dtype {t.dtype}, which has no wire code")
    encoded = name.encode("utf-8")
    if len(encoded) > 255:
        raise ValueError(f"payload key {name[:40]!r}... is longer than 255 bytes")
    if t.dim() > 255 or any(s > _MAX_DIM for s in t.shape):
        raise ValueError(f"payload entry {name!r} has an unsupported shape {tuple(t.shape)}")
    return encoded


def _check_count(payload: Mapping[str, torch.Tensor]) -> None:
    if len(payload) > _MAX_ENTRIES:
        raise ValueError(f"a payload holds at most {_MAX_ENTRIES} tensors, got {len(payload)}")


def entry_nbytes(name: str, t: torch.Tensor) -> int:
    """Framing plus data bytes of one payload entry."""
    return 3 + len(_check_entry(name, t)) + 4 * t.dim() + t.numel() * t.element_size()


def payload_nbytes(payload: Mapping[str, torch.Tensor]) -> int:
    """``len(serialize(payload))``, computed from shapes and dtypes alone."""
    _check_count(payload)
    return 2 + sum(entry_nbytes(name, t) for name, t in payload.items())


def _raw(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1).cpu()
    if flat.numel() == 0:
        return b""
    if flat.stride(0) != 1:  # one element of a strided view is "contiguous" at any stride
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8).numpy().tobytes()


def _frame(name: str, t: torch.Tensor) -> bytes:
    """One entry's framing: ``name_len name dtype ndim dim*ndim``."""
    encoded = _check_entry(name, t)
    return (
        struct.pack("<B", len(encoded))
        + encoded
        + struct.pack(f"<BB{t.dim()}I", DTYPE_CODES[t.dtype], t.dim(), *t.shape)
    )


def _read_frame(view: memoryview, pos: int) -> tuple[str, torch.dtype, tuple[int, ...], int]:
    """Name, dtype and shape of the entry framed at ``pos``, and where its data starts."""
    (name_len,) = struct.unpack_from("<B", view, pos)
    pos += 1
    name = bytes(view[pos : pos + name_len]).decode("utf-8")
    pos += name_len
    code, ndim = struct.unpack_from("<BB", view, pos)
    pos += 2
    shape = struct.unpack_from(f"<{ndim}I", view, pos)
    return name, CODE_DTYPES[code], tuple(shape), pos + 4 * ndim


def _check_little_endian() -> None:
    if sys.byteorder != "little":  # pragma: no cover - every platform we run on is
        raise NotImplementedError("the wire format is little-endian; big-endian hosts unsupported")


def serialize(payload: Mapping[str, torch.Tensor]) -> bytes:
    """The payload as bytes in the wire format above (tensors may live on any device)."""
    _check_little_endian()
    _check_count(payload)
    parts = [struct.pack("<H", len(payload))]
    for name, t in payload.items():
        parts += [_frame(name, t), _raw(t)]
    return b"".join(parts)


Layout = list[tuple[str, torch.dtype, tuple[int, ...]]]
"""Name, dtype and shape of each entry of a payload, in order."""


def serialize_layout(payload: Mapping[str, torch.Tensor]) -> bytes:
    """The message's framing alone: ``count`` and every entry's framing, without the data.

    With the entries' data bytes concatenated (in order) it is exactly as long as
    :func:`serialize`'s message; a receiver that gets both rebuilds the payload with
    :func:`parse_layout`. Collectives use it to keep the data on the device.
    """
    _check_count(payload)
    return struct.pack("<H", len(payload)) + b"".join(_frame(n, t) for n, t in payload.items())


def parse_layout(data: bytes) -> Layout:
    """Inverse of :func:`serialize_layout`."""
    view = memoryview(data)
    try:
        (count,) = struct.unpack_from("<H", view, 0)
        pos, out = 2, []
        for _ in range(count):
            name, dtype, shape, pos = _read_frame(view, pos)
            out.append((name, dtype, shape))
    except (struct.error, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a Shoal payload layout: {exc}") from exc
    if pos != len(view):
        raise ValueError(f"{len(view) - pos} trailing bytes after the last entry's framing")
    return out


def deserialize(data: bytes, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`serialize`; tensors are placed on ``device`` (CPU by default)."""
    _check_little_endian()
    view = memoryview(data)
    try:
        (count,) = struct.unpack_from("<H", view, 0)
        pos = 2
        out: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name, dtype, shape, pos = _read_frame(view, pos)
            numel = 1
            for s in shape:
                numel *= s
            size = numel * dtype.itemsize
            if pos + size > len(view):
                raise ValueError("truncated message")
            if size == 0:
                t = torch.empty(shape, dtype=dtype)
            else:
                raw = torch.frombuffer(bytearray(view[pos : pos + size]), dtype=torch.uint8)
                t = raw.view(dtype).reshape(shape)
            pos += size
            out[name] = t if device is None else t.to(device)
    except (struct.error, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a Shoal payload message: {exc}") from exc
    if pos != len(view):
        raise ValueError(f"{len(view) - pos} trailing bytes after the last tensor")
    return out
