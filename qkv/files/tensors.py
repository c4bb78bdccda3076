"""Weight files qkv reads: safetensors (the header checked against the file's size before any tensor is read),
torch pickles as plain tensors only (never code), .npz arrays (headers checked before numpy allocates), and what a
loaded state must be: finite numbers, of the kind (floating point or integer) the model stores."""
from __future__ import annotations

import math
import re
import struct
import zipfile
from pathlib import Path

import torch

from .jsonfile import loads
from .memory import check_fits

MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
ST_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
ST_FLOATS = {"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"}
_TORCH_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
                 "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "I64": torch.int64,
                 "F64": torch.float64}


def safetensors_header(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of a .safetensors file, read from its header alone after checking that the header
    is well formed and every tensor's bytes lie within the file (a truncated download is named as such)."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{p}: {size} bytes, too short for a safetensors file (truncated?)")
        n = struct.unpack("<Q", head)[0]
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"{p}: its header claims {n} bytes but the file holds {size}; expected a complete "
                             f"safetensors file (truncated, or not safetensors at all)")
        raw = f.read(n)
    try:
        header = loads(raw, what=f"{p}: the safetensors header", expect=dict)
    except ValueError as e:
        raise ValueError(f"{e}; not a safetensors file, or damaged") from None
    data_bytes, out = size - 8 - n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in ST_BYTES and isinstance(info.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in info["shape"]) \
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 \
            and all(isinstance(o, int) for o in info["data_offsets"])
        if not ok:
            raise ValueError(f"{p}: tensor {name!r} has a malformed header entry {str(info)[:80]}")
        begin, end = info["data_offsets"]
        need = math.prod(info["shape"]) * ST_BYTES[info["dtype"]]
        if not 0 <= begin <= end or end - begin != need:
            raise ValueError(f"{p}: tensor {name!r} of shape {tuple(info['shape'])} ({info['dtype']}) needs {need} "
                             f"bytes but its offsets {info['data_offsets']} span {end - begin}; the file is damaged")
        if end > data_bytes:
            raise ValueError(f"{p}: tensor {name!r} ends at byte {end} of the data but the file holds only "
                             f"{data_bytes} bytes of data; the file is truncated (re-download or re-save it)")
        out[name] = (info["dtype"], tuple(info["shape"]))
    return out


def load_safetensors(path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, after ``safetensors_header`` has checked the file whole."""
    from safetensors.torch import load_file  # optional until a safetensors file is read
    safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors' own error type is not a ValueError
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def meta_tensors(header: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Shapes-only stand-ins (meta tensors) for a safetensors header: converters run on them to learn the shapes
    they would produce, with nothing read or allocated. Each keeps its file's dtype (float8 and unsigned kinds as
    float32 and int64: the kind is what the dtype check reads)."""
    def dtype(dt: str) -> torch.dtype:
        return _TORCH_DTYPES.get(dt, torch.float32 if dt in ST_FLOATS else torch.int64)
    return {k: torch.empty(shape, dtype=dtype(dt), device="meta") for k, (dt, shape) in header.items()}


def load_tensor_pickle(path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d dict of tensors (pytorch_model.bin, an RWKV .pth), read with ``weights_only=True`` and
    memory-mapped: nothing in the file can run code, and nothing is read before it is used. A pickle that calls
    anything else is refused, naming what it calls."""
    import pickle
    p = Path(path)
    if not zipfile.is_zipfile(p):
        raise ValueError(f"{p}: not a torch zip checkpoint (torch >= 1.6 format); qkv reads that format or "
                         f".safetensors only")
    size = p.stat().st_size
    with zipfile.ZipFile(p) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise ValueError(f"{p}: member {info.filename!r} is compressed or larger than the file "
                                 f"({info.file_size} bytes); torch checkpoints store tensors uncompressed")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, KeyError, ValueError) as e:
        found = re.search(r"(Unsupported global|Unsupported operand|unsupported)[^\n.]*", str(e))
        why = found.group(0).strip() if found else str(e).splitlines()[0][:160]
        raise ValueError(f"{p}: refused: the pickle holds more than plain tensors ({why}); qkv never runs code "
                         f"from a checkpoint - save it as .safetensors with code you trust") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict holding non-tensor values"
        raise ValueError(f"{p}: holds {kind}; expected a dict of name -> tensor (a state dict)")
    return state


def check_npz(path) -> None:
    """Each array of a .npz against its zip member and the machine's memory, from the .npy headers alone (numpy
    allocates an array's declared size before reading a zip member): a tiny file claiming a huge array is
    refused before that allocation."""
    import numpy as np
    p = Path(path)
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{p}: not a readable .npz file ({e})") from None
    with z:
        for info in z.infolist():
            with z.open(info) as f:
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                try:
                    version = np.lib.format.read_magic(f)
                    if version not in readers:
                        raise ValueError(f"format version {version}; expected 1.0 or 2.0")
                    shape, _, dtype = readers[version](f)
                except (ValueError, TypeError, SyntaxError) as e:
                    raise ValueError(f"{p}: member {info.filename!r} is not a .npy array ({e})") from None
            need = math.prod(shape) * dtype.itemsize
            if need > info.file_size:
                raise ValueError(f"{p}: array {info.filename!r} of shape {shape} needs {need} bytes but the member "
                                 f"holds {info.file_size}; the file is damaged or truncated")
            check_fits(need, what=f"{p}: array {info.filename!r} of shape {shape} ({dtype})")


def check_finite(state: dict[str, torch.Tensor], *, source) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor and how many values are bad."""
    for name, t in state.items():
        if t.is_floating_point() and t.device.type != "meta" and t.numel():
            bad = t.numel() - int(torch.isfinite(t).sum())
            if bad:
                raise ValueError(f"{source}: weight {name!r} holds {bad} NaN/infinite value(s) of {t.numel()}; "
                                 f"expected finite numbers (a damaged or diverged checkpoint)")


def is_float_kind(dtype) -> bool:
    """Whether a dtype (a torch.dtype or a safetensors name such as "F32") holds floating-point numbers."""
    return dtype in ST_FLOATS if isinstance(dtype, str) else dtype.is_floating_point


def check_dtypes(expected: dict[str, torch.dtype], found: dict, *, source) -> None:
    """Refuse a tensor stored as another kind of number than the model keeps it: integers (or booleans) where the
    architecture stores floating-point weights, or the reverse. ``found`` maps names to torch dtypes or safetensors
    dtype names; names on one side only are left to the shape check. A float tensor relabelled I32 holds the same
    bytes read as integers: it would load, and every value would be wrong."""
    for name in sorted(set(expected) & set(found)):
        want, got = is_float_kind(expected[name]), is_float_kind(found[name])
        if want != got:
            kind = "floating-point numbers" if want else "integers"
            raise ValueError(f"{source}: weight {name!r} is stored as {_dtype_name(found[name])}, but the model "
                             f"holds it as {_dtype_name(expected[name])}; expected {kind} (a relabelled or damaged "
                             f"file)")


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
