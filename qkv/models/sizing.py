"""What a model of a config holds, known before it is built: every weight's name, shape and dtype, the names that
alias another (tied weights), the parameter count and the memory a build takes. One build on PyTorch's meta device
(no memory, no initialisation) of at most two repeats of the layer pattern per stack gives all of it, for any layer
count: blocks past the second repeat are copies of the second repeat's (the first may differ: RWKV's ln0, RWKV-7's
first block); so a config claiming a million layers costs no more to size than one claiming four.

A load computes its ``Blueprint`` once and hands it on: the file checks (layer count, shapes, dtypes), the memory
check and ``qkv.build`` all read the same one (``qkv.load`` and ``qkv.from_hf`` build on the meta device once).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..files import available_bytes, check_fits
from .positions import decodable_positions
from .registry import Family, family_of

_OBJECT_BYTES = 2048  # Python's cost of one module or parameter object, measured ~1.2 KiB; a round upper figure


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


def meta_build(record: Family, config: ModelConfig):
    """The model of ``config`` on the meta device: shapes and module objects, no weights, no initialisation."""
    with torch.device("meta"), SkipMetaInit():
        return record.model(config)


@dataclass(frozen=True)
class _Block:
    """One block of the measured build: its state entries (name relative to the block -> (shape, dtype)), its
    aliased entries, and what it costs (tensor elements, Python objects)."""
    entries: dict[str, tuple[tuple[int, ...], torch.dtype]]
    aliases: frozenset[str]
    numel: int
    objects: int


@dataclass(frozen=True)
class Blueprint:
    """What a model of ``config`` holds (see the module docstring). ``parameters`` counts the elements of every
    parameter and buffer (position tables included); ``objects`` the modules and tensors Python keeps for them."""
    config: ModelConfig
    parameters: int
    objects: int
    measured: dict[str, tuple[tuple[int, ...], torch.dtype]]  # the build's own state entries
    measured_aliases: frozenset[str]
    stacks: tuple[tuple[str, int, int, tuple[_Block, ...]], ...]  # (path, blocks built, blocks wanted, the blocks)

    def nbytes(self, dtype_bytes: int = 4) -> int:
        """Bytes a build takes: the tensors at ``dtype_bytes`` per element plus the module and tensor objects."""
        return int(self.parameters * dtype_bytes + self.objects * _OBJECT_BYTES)

    def entries(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) of every state-dict entry of the full model. Materialises one entry per weight:
        call it after the layer count has been checked against a file (or the memory check has passed)."""
        out = dict(self.measured)
        for path, built, wanted, blocks in self.stacks:
            for j in range(built, wanted):
                out.update({f"{path}.{j}.{k}": v for k, v in _template(blocks, j).entries.items()})
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: shape for k, (shape, _) in self.entries().items()}

    def dtypes(self) -> dict[str, torch.dtype]:
        return {k: dtype for k, (_, dtype) in self.entries().items()}

    def aliases(self) -> set[str]:
        """The names that share their tensor with another name (tied weights, stored once)."""
        out = set(self.measured_aliases)
        for path, built, wanted, blocks in self.stacks:
            for j in range(built, wanted):
                out |= {f"{path}.{j}.{k}" for k in _template(blocks, j).aliases}
        return out

    def sizes(self) -> str:
        return model_sizes(self.config)

    def check_fits(self, *, device=None, source: str = "config", dtype_bytes: int = 4) -> None:
        """Refuse to build a model whose weights (and module objects) would not fit in memory, naming its sizes."""
        nbytes = self.nbytes(dtype_bytes)
        if nbytes > available_bytes(device):
            check_fits(nbytes, device=device, what=f"{source}: a model of {self.parameters:,} parameters "
                                                   f"({self.sizes()})")


def _template(blocks: tuple[_Block, ...], j: int) -> _Block:
    """The measured block that block ``j`` of a stack copies: itself if it was built, else the block at the same
    place of the pattern in the second repeat (blocks = two repeats of ``period`` blocks)."""
    if j < len(blocks):
        return blocks[j]
    period = len(blocks) // 2
    return blocks[period + j % period]


def _measure_block(block: torch.nn.Module, shared: set[int]) -> _Block:
    entries = {k: (tuple(v.shape), v.dtype) for k, v in block.state_dict().items()}
    tensors = {id(t): t.numel() for t in (*block.parameters(), *block.buffers())}
    groups: dict[int, list[str]] = {}
    for name, t in (*block.named_parameters(remove_duplicate=False), *block.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), []).append(name)
    aliases = frozenset(n for key, names in groups.items() if len(names) > 1 or key in shared for n in names)
    return _Block(entries, aliases, sum(tensors.values()), sum(1 for _ in block.modules()) + len(tensors))


def blueprint(config: ModelConfig) -> Blueprint:
    """The ``Blueprint`` of ``config``, from one meta build of at most two repeats of its layer pattern per stack."""
    record = family_of(config)
    period = len(config.layer_pattern) if config.layer_pattern else 1
    wanted = record.layer_counts(config)
    built = {field: min(n, 2 * period) if record.block_paths else n for field, n in wanted.items()}
    small = config if built == wanted else config.replace(**{"n_decoder_layers": built.get("n_layers"), **built})
    model = meta_build(record, small)
    groups: dict[int, list[str]] = {}
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), []).append(name)
    shared = {key for key, names in groups.items() if len(names) > 1}
    tensors = {id(t): t.numel() for t in (*model.parameters(), *model.buffers())}
    parameters, objects = sum(tensors.values()), sum(1 for _ in model.modules()) + len(tensors)
    stacks = []
    for field, path in zip(record.stacks, record.block_paths):
        found = model.get_submodule(path) if built[field] < wanted[field] else ()
        if built[field] < wanted[field] and len(found) != built[field]:
            raise ValueError(f"family {record.name!r}: block_paths names {path!r} for {field}, which holds {len(found)} "
                             f"blocks in a model of {built[field]}; expected one block per layer (see Family)")
        blocks = tuple(_measure_block(b, shared) for b in found)
        for j in range(built[field], wanted[field]):
            parameters, objects = parameters + _template(blocks, j).numel, objects + _template(blocks, j).objects
        stacks.append((path, built[field], wanted[field], blocks))
    return Blueprint(config, parameters, objects,
                     {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()},
                     frozenset(n for key in shared for n in groups[key]), tuple(stacks))


def model_bytes(config: ModelConfig, *, dtype_bytes: int = 4) -> tuple[int, int]:
    """(parameters, bytes to build) of a model of ``config``, without building it (``blueprint``)."""
    bp = blueprint(config)
    return bp.parameters, bp.nbytes(dtype_bytes)


def model_sizes(config: ModelConfig) -> str:
    """The fields that decide a model's size, as ``n_layers=12, d_model=768, ...``, for messages."""
    fields = list(family_of(config).stacks) + ["d_model", "d_ff", "n_heads", "head_dim", "vocab_size"]
    if decodable_positions(config) is not None:  # a position table: its rows are weights
        fields.append("max_positions")
    return ", ".join(f"{f}={getattr(config, f)}" for f in fields)


def check_model_fits(config: ModelConfig, *, device=None, source: str = "config") -> Blueprint:
    """Refuse to build a model whose weights (and module objects) would not fit in memory; returns its blueprint."""
    bp = blueprint(config)
    bp.check_fits(device=device, source=source)
    return bp


# -- a config against the file that claims to hold its weights -------------------------------------------------

def check_layer_count(keys, n_layers: int, *, field: str, source) -> None:
    """A config's layer count against a checkpoint's tensor names: n layers need n distinct block indices
    (the numbers among the dotted name parts), so ``n_layers: 1000000`` over a 2-layer file, or one stray key
    ``blocks.1000000.x``, is refused before any layer is built."""
    indices = {int(part) for k in keys for part in str(k).split(".") if part.isdigit()}
    if n_layers > max(len(indices), 1):
        s = sorted(indices)
        hint = f" ({', '.join(map(str, s[:6]))}{', ...' if len(s) > 6 else ''}, largest {s[-1]})" if s else ""
        raise ValueError(f"{source}: {field}={n_layers}, but the weights hold only {len(indices)} distinct layer "
                         f"indices{hint}; expected {field} <= {len(indices)}")


_SIZE_FIELDS = ("vocab_size", "d_model", "d_ff", "n_heads", "n_kv_heads", "head_dim", "max_positions",
                "type_vocab_size", "num_labels", "relative_buckets", "patch_size", "num_channels", "image_size")


def check_shapes(config: ModelConfig, expected: dict[str, tuple], found: dict[str, tuple], *, source,
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
