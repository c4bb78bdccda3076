"""What qkv checks before it trusts a file or folder someone handed it, shared by every loader.

A folder from elsewhere (a Hugging Face download, an RWKV release, a colleague's run) is data, never code, and
its sizes are claims until a file backs them. Each check here raises ValueError / FileNotFoundError with one
line naming the file (or the field), the value found and what was expected; docs/security.md is the summary.

- paths: a file named by a folder's own contents (an index's shard, modules.json, ``latest``) or a symbolic
  link in it must stay inside the folder (``inside``). The one exception, by name, is the Hugging Face cache,
  whose ``snapshots/<rev>/`` files link into the same repository's ``blobs/``.
- reading: JSON with the file's name in every error (``read_json``); safetensors headers checked against the
  file's size before any tensor is read (``safetensors_header``, ``load_safetensors``); torch pickles only as
  plain tensors, never with code (``load_tensor_pickle``).
- content: weights finite (``check_finite``); qkv's own folders carry ``manifest.json``, the sha256 of every
  file, written last and checked on load (``write_manifest``, ``verify_manifest``).
- sizes: a config's layer count against what the weights file holds (``check_layer_count``), its shapes against
  the file's (``check_shapes``), and the bytes a model or a request needs against the memory the machine has
  (``model_bytes``, ``check_fits``), all before anything is allocated.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path

import torch

MANIFEST_FILE = "manifest.json"
_MANIFEST_FORMAT = "qkv-manifest/1"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_TORCH_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
                 "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "I64": torch.int64,
                 "F64": torch.float64}


# -- paths -----------------------------------------------------------------------------------------------------

def hf_cache_blobs(folder) -> Path | None:
    """The ``blobs/`` folder of the Hugging Face cache repository ``folder`` lies in (``<cache>/models--org--name/
    snapshots/<rev>/...``), or None when ``folder`` is not inside such a snapshot."""
    p = Path(folder).absolute()
    for q in (p, *p.parents):
        if q.parent.name == "snapshots" and q.parent.parent.name.startswith(("models--", "datasets--")):
            return q.parent.parent / "blobs"
    return None


def inside(root, path, *, what: str = "file") -> Path:
    """``path`` (a file or folder qkv is about to read under ``root``) after checking that it, and any link it
    goes through, stays inside ``root``; raises ValueError naming the path and where it leads otherwise. A link
    from a Hugging Face cache snapshot into its repository's ``blobs/`` is allowed. Returns ``path`` as given."""
    root_r = Path(root).resolve()
    p = Path(path)
    target = p.resolve()
    if target == root_r or root_r in target.parents:
        return p
    blobs = hf_cache_blobs(root)
    if blobs is not None and blobs.resolve() in target.parents:
        return p
    how = "is a symbolic link to" if p.is_symlink() or p.absolute() != target else "resolves to"
    raise ValueError(f"{what} {str(p)!r} {how} {str(target)!r}, outside the folder {str(Path(root))!r}; qkv reads "
                     f"only files inside the folder it was given (the Hugging Face cache's snapshots -> blobs links "
                     f"are the one exception)")


def child(root, name, *, what: str) -> Path:
    """``root / name`` for a relative ``name`` read from one of the folder's own files (an index, modules.json):
    absolute names and names climbing out with ``..`` are refused, and so are links leading outside."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or Path(name).is_absolute() \
            or ".." in Path(name).parts:
        raise ValueError(f"{what}: {name!r} is not a relative path inside {str(Path(root))!r}; expected a file name "
                         f"in the folder")
    return inside(root, Path(root) / name, what=what)


def check_no_links(folder, names, *, what: str = "folder") -> None:
    """Refuse a folder qkv is about to write into (a run folder) if any of the entries ``names`` it writes, or
    anything under them, is a symbolic link: a write or a clean-up through a link would change files elsewhere."""
    root = Path(folder)
    for name in names:
        top = root / name
        for p in [top] + ([q for base, dirs, files in os.walk(top) for q in map(Path(base).joinpath, dirs + files)]
                          if top.is_dir() and not top.is_symlink() else []):
            if p.is_symlink():
                raise ValueError(f"{what} {str(root)!r} holds a symbolic link {str(p)!r} -> {os.readlink(p)!r}; "
                                 f"qkv writes only real files in a run folder (remove the link)")


# -- reading ---------------------------------------------------------------------------------------------------

def read_json(path, *, expect: type | tuple = dict, what: str | None = None):
    """A JSON file's value, with the file's name in every error: missing, not UTF-8, not valid JSON (line and
    column), or not of the ``expect``ed type (a config must be an object, not a list)."""
    p = Path(path)
    name = what or str(p)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such file" if p.exists() is False else f"{name}: not a file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: byte {data[e.start]:#04x} at offset {e.start} is not valid UTF-8; expected a "
                         f"JSON text file") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(value, expect):
        kinds = expect if isinstance(expect, tuple) else (expect,)
        names = {dict: "an object {...}", list: "a list [...]", str: "a string"}
        wanted = " or ".join(names.get(k, k.__name__) for k in kinds)
        raise ValueError(f"{name}: holds {_json_kind(value)}; expected {wanted}")
    return value


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


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
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{p}: its header claims {n} bytes but the file holds {size}; expected a complete "
                             f"safetensors file (truncated, or not safetensors at all)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{p}: the safetensors header is not valid JSON; not a safetensors file, or damaged") from None
    if not isinstance(header, dict):
        raise ValueError(f"{p}: the safetensors header is {_json_kind(header)}; expected an object")
    data_bytes, out = size - 8 - n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in _ST_DTYPES and isinstance(info.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in info["shape"]) \
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 \
            and all(isinstance(o, int) for o in info["data_offsets"])
        if not ok:
            raise ValueError(f"{p}: tensor {name!r} has a malformed header entry {str(info)[:80]}")
        begin, end = info["data_offsets"]
        need = math.prod(info["shape"]) * _ST_DTYPES[info["dtype"]]
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
    from safetensors.torch import load_file
    safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors' own error type is not a ValueError
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def meta_tensors(header: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Shapes-only stand-ins (meta tensors) for a safetensors header: converters run on them to learn the shapes
    they would produce, with nothing read or allocated."""
    return {k: torch.empty(shape, dtype=_TORCH_DTYPES.get(dt, torch.float32), device="meta")
            for k, (dt, shape) in header.items()}


def load_tensor_pickle(path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d dict of tensors (pytorch_model.bin, an RWKV .pth), read with ``weights_only=True`` and
    memory-mapped: nothing in the file can run code, and nothing is read before it is used. A pickle that calls
    anything else is refused, naming what it calls."""
    import pickle
    import zipfile
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
    import zipfile
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


# -- content ---------------------------------------------------------------------------------------------------

def check_finite(state: dict[str, torch.Tensor], *, source) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor and how many values are bad."""
    for name, t in state.items():
        if t.is_floating_point() and t.device.type != "meta" and t.numel():
            bad = t.numel() - int(torch.isfinite(t).sum())
            if bad:
                raise ValueError(f"{source}: weight {name!r} holds {bad} NaN/infinite value(s) of {t.numel()}; "
                                 f"expected finite numbers (a damaged or diverged checkpoint)")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder, names=None) -> Path:
    """Write ``folder/manifest.json``: the sha256 of the files ``names`` (default: every file under ``folder``, the
    manifest itself aside), under a temporary name renamed into place."""
    root = Path(folder)
    if names is not None:
        files = [root / n for n in names]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
                       and not p.name.startswith(f".{MANIFEST_FILE}"))
    manifest = {"format": _MANIFEST_FORMAT, "algorithm": "sha256",
                "files": {p.relative_to(root).as_posix(): sha256(p) for p in files}}
    return write_atomic(root / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def verify_manifest(folder, *, required: bool = False, must_list: tuple[str, ...] = ()) -> bool:
    """Check every file listed in ``folder/manifest.json`` against its sha256. Returns False when there is no
    manifest (and ``required`` is False); raises ValueError naming the first file that is missing or changed."""
    root = Path(folder)
    m = root / MANIFEST_FILE
    if not m.exists() and not m.is_symlink():
        if required:
            raise ValueError(f"{root}: {MANIFEST_FILE} is missing; a qkv checkpoint carries the sha256 of its files")
        return False
    manifest = read_json(inside(root, m, what=MANIFEST_FILE))
    files = manifest.get("files")
    if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
        raise ValueError(f"{m}: format {manifest.get('format')!r}; expected {_MANIFEST_FORMAT!r} with a 'files' object")
    for name in must_list:
        if name not in files:
            raise ValueError(f"{m}: does not list {name}; expected every file of the folder")
    for rel, digest in files.items():
        p = child(root, rel, what=f"{m} entry")
        if not p.is_file():
            raise ValueError(f"{p}: listed in {MANIFEST_FILE} but missing; the folder is incomplete")
        if sha256(p) != digest:
            raise ValueError(f"{p}: its content does not match the sha256 in {MANIFEST_FILE}; the file was damaged "
                             f"or changed after it was written")
    return True


def write_atomic(path, text: str) -> Path:
    """Write text under a temporary name, then rename it over ``path``: readers see the old file or the new one,
    and a link at ``path`` is replaced, never written through."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- sizes -----------------------------------------------------------------------------------------------------

def check_layer_count(keys, n_layers: int, *, field: str, source) -> None:
    """A config's layer count against a checkpoint's tensor names: n layers need n distinct block indices
    (the numbers among the dotted name parts), so ``n_layers: 1000000`` over a 2-layer file, or one stray key
    ``blocks.1000000.x``, is refused before any layer is built."""
    indices = {int(part) for k in keys for part in str(k).split(".") if part.isdigit()}
    if n_layers > max(len(indices), 1):
        raise ValueError(f"{source}: {field}={n_layers}, but the weights hold only {len(indices)} distinct layer "
                         f"indices{_index_hint(indices)}; expected {field} <= {len(indices)}")


def _index_hint(indices: set[int]) -> str:
    if not indices:
        return ""
    s = sorted(indices)
    return f" ({', '.join(map(str, s[:6]))}{', ...' if len(s) > 6 else ''}, largest {s[-1]})"


_SIZE_FIELDS = ("vocab_size", "d_model", "d_ff", "n_heads", "n_kv_heads", "head_dim", "max_positions",
                "type_vocab_size", "num_labels", "relative_buckets", "patch_size", "num_channels", "image_size")


def check_shapes(config, expected: dict[str, tuple], found: dict[str, tuple], *, source,
                 optional: set[str] = frozenset()) -> None:
    """The shapes a config builds (``expected``, name -> shape) against those a file holds (``found``): refuse the
    first disagreement, naming the tensor, both shapes and the config fields whose values explain it."""
    missing = sorted(set(expected) - set(found) - set(optional))
    if missing:
        raise ValueError(f"{source}: the config needs weight {missing[0]!r} {tuple(expected[missing[0]])}, which "
                         f"the file does not hold ({len(missing)} missing)")
    unknown = sorted(set(found) - set(expected))
    if unknown:
        raise ValueError(f"{source}: the file holds weight {unknown[0]!r} {tuple(found[unknown[0]])}, which the "
                         f"config does not build ({len(unknown)} unexpected)")
    for name in sorted(set(expected) & set(found)):
        a, b = tuple(expected[name]), tuple(found[name])
        if a != b:
            fields = [f"{f}={getattr(config, f)}" for f in _SIZE_FIELDS
                      if isinstance(getattr(config, f, None), int) and getattr(config, f) in a
                      and getattr(config, f) not in b]
            raise ValueError(f"{source}: weight {name!r} has shape {b} in the file, but the config builds {a}"
                             + (f" ({', '.join(fields)})" if fields else "") + "; the config does not describe "
                             "these weights")


def available_bytes(device=None) -> int:
    """Memory a new allocation can take on ``device``: free GPU memory, or the machine's available memory within
    any cgroup (container) limit."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: do not refuse
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(int(avail), 0)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(nbytes: float, *, what: str, device=None, limit: int | None = None) -> None:
    """Refuse a request of ``nbytes`` that cannot fit in the memory ``device`` has; ``what`` names the field(s)
    and value(s) responsible, e.g. "max_new_tokens=1000000000"."""
    avail = available_bytes(device) if limit is None else limit
    if nbytes > avail:
        where = torch.device(device).type if device is not None else "cpu"
        raise ValueError(f"{what} needs about {human(nbytes)} of memory, more than the {human(avail)} available "
                         f"on {where}; expected a smaller value")


_OBJECT_BYTES = 2048  # Python's cost of one module or parameter object, measured ~1.2 KiB; a round upper figure


def model_bytes(config, *, dtype_bytes: int = 4) -> tuple[int, int]:
    """(parameters, bytes to build) of a model of ``config``, without building it: the family's model with one
    and with two repeats of its layer pattern is built on the meta device (no memory), and the growth per repeat
    scaled to the config's layer counts. Bytes include Python's cost of the module objects."""
    from .models.registry import FAMILIES
    record = FAMILIES.get(config.family)
    if record is None:
        return 0, 0
    cls = record.model
    period = len(config.layer_pattern) if config.layer_pattern else 1

    def measure(k: int):
        small = config.replace(n_layers=k * period, n_decoder_layers=k * period)
        with torch.device("meta"), SkipMetaInit():
            m = cls(small)
        tensors = {id(t): t.numel() for t in (*m.parameters(), *m.buffers())}
        return sum(tensors.values()), sum(1 for _ in m.modules()) + len(tensors)

    (p1, o1), (p2, o2) = measure(1), measure(2)
    counts = record.layer_counts(config)  # blocks of each stack
    repeats = sum(counts.values()) / (len(counts) * period)  # pattern repeats per stack, all stacks together
    params = p1 + (p2 - p1) * (repeats - 1)
    objects = o1 + (o2 - o1) * (repeats - 1)
    return int(params), int(params * dtype_bytes + objects * _OBJECT_BYTES)


class SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Skips in-place operations on meta tensors while a model is built to be measured: initialising weights that
    hold no data changes no shape, and a random init on the meta device would import the compiler stack (about a
    second and a half at every ``qkv train``'s start)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__")  # normal_, uniform_, zero_ ... (not __get__)
        if in_place and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def model_sizes(config) -> str:
    """The fields that decide a model's size, as ``n_layers=12, d_model=768, ...``, for messages."""
    from .models.registry import FAMILIES
    from .models.positions import decodable_positions
    record = FAMILIES.get(config.family)
    fields = list(record.stacks if record else ("n_layers",)) + ["d_model", "d_ff", "n_heads", "head_dim",
                                                                 "vocab_size"]
    if decodable_positions(config) is not None:  # a position table: its rows are weights
        fields.append("max_positions")
    return ", ".join(f"{f}={getattr(config, f)}" for f in fields)


def check_model_fits(config, *, device=None, source: str = "config") -> None:
    """Refuse to build a model whose weights (and module objects) would not fit in memory, naming its sizes."""
    params, nbytes = model_bytes(config)
    if nbytes > available_bytes(device):
        check_fits(nbytes, device=device, what=f"{source}: a model of {params:,} parameters ({model_sizes(config)})")
