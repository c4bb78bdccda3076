"""Hugging Face checkpoint folders in and out: ``qkv.from_hf(path)``, ``qkv.to_hf(model, path)``.

A folder holds config.json and weights: model.safetensors, pytorch_model.bin (read with weights_only=True), or
either one sharded with an index file. Each supported architecture is a ``Converter``: a translation of the
config and an explicit map of weight names, keyed by the config's ``model_type`` in one table (``CONVERTERS``). The
maps live beside this file, one per family (hf_decoder.py, hf_encoder.py, hf_seq2seq.py), built from hf_maps.py.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .. import files
from ..config import ModelConfig
from ..models import build, family_of
from ..models.sizing import Blueprint, blueprint, check_layer_count, check_shapes
from . import hf_decoder, hf_encoder, hf_seq2seq
from .hf_fields import check_hf_fields
from .hf_maps import Converter, StateDict

log = logging.getLogger("qkv.hub")


# One table of every architecture, each converter listed by the module that maps its family (nothing registers
# itself on import).
CONVERTERS: dict[str, Converter] = {c.model_type: c for c in (*hf_decoder.CONVERTERS, *hf_encoder.CONVERTERS,
                                                              *hf_seq2seq.CONVERTERS)}


def supported() -> list[str]:
    return sorted(CONVERTERS)


# -- reading a folder ---------------------------------------------------------------------------------------------

def _resolve_folder(path: Path) -> Path:
    """The folder that holds config.json. A sentence-transformers folder may keep its transformer in a
    sub-folder named by modules.json; recent ones keep the weights in the top folder."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder" if not path.exists() else
                                f"{path}: is a file; expected a Hugging Face checkpoint folder")
    if (path / "config.json").is_file():
        return path
    modules = path / "modules.json"
    if modules.is_file():
        for module in files.read_json(files.inside(path, modules, what="modules.json"), expect=list):
            if isinstance(module, dict) and str(module.get("type", "")).endswith("Transformer"):
                sub = files.child(path, module.get("path", ""), what=f"{modules} entry 'path'")
                if (sub / "config.json").is_file():
                    return sub
    raise FileNotFoundError(f"{path}: config.json is missing (not a Hugging Face checkpoint folder)")


def _load_weight_file(file: Path, *, shapes_only: bool = False) -> StateDict:
    """One weights file: safetensors (header checked against the file first), or a torch pickle read as plain
    tensors only. ``shapes_only``: meta tensors with the file's shapes, nothing read (a pickle is memory-mapped)."""
    if file.suffix == ".safetensors":
        if shapes_only:
            return files.meta_tensors(files.safetensors_header(file))
        return files.load_safetensors(file)
    return files.load_tensor_pickle(file)


def weight_files(folder: Path) -> list[Path]:
    """The weights files of a folder, single-file or sharded, safetensors preferred; every name an index gives
    must stay inside the folder (links into the Hugging Face cache's blobs/ allowed)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = files.read_json(files.inside(folder, index, what=index_name)).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: expected a non-empty 'weight_map' object (tensor name -> shard file)")
            shards = []
            for shard in sorted(set(map(str, weight_map.values()))):
                file = files.child(folder, shard, what=f"{index_name} shard")
                if not file.is_file():
                    raise FileNotFoundError(f"{folder}: shard {shard} named in {index_name} is missing")
                shards.append(file)
            return shards
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [files.inside(folder, folder / name, what=name)]
    raise FileNotFoundError(f"{folder}: no weights found (looked for model.safetensors, pytorch_model.bin and "
                            f"their sharded index files)")


def read_weights(folder: Path, *, shapes_only: bool = False) -> StateDict:
    """All tensors of a folder, single-file or sharded (see ``weight_files``)."""
    state: StateDict = {}
    for file in weight_files(folder):
        state.update(_load_weight_file(file, shapes_only=shapes_only))
    return state


# -- the two entry points ----------------------------------------------------------------------------------------

def hf_folder(path) -> Path:
    """The folder that holds config.json for a Hugging Face folder or hub id (a sentence-transformers folder may keep
    it in a sub-folder)."""
    return _resolve_folder(files.resolve(path))


def hf_config(path) -> ModelConfig:
    """The qkv config of a Hugging Face folder or hub id, reading no weights (``config.json`` translated by the
    folder's converter). ValueError names an unsupported architecture or a missing or mistyped field."""
    return _read_config(path)[3]


def _read_config(path):
    """(the resolved path, the folder holding config.json, its model_type, the qkv config). Every field the
    translation reads is type- and range-checked first (``hf_fields``); ValueError names the file and the field."""
    path = files.resolve(path)
    folder = _resolve_folder(path)
    source = folder / "config.json"
    hf_config = files.read_json(files.inside(path, source, what="config.json"))
    check_hf_fields(hf_config, source=source)
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:  # before reading gigabytes of weights
        names = ", ".join(map(str, hf_config.get("architectures") or []))
        raise ValueError(f"{path}: architecture {model_type!r} ({names}) "
                         f"is not supported; supported model types: {', '.join(supported())}")
    try:
        config = CONVERTERS[model_type].config_from_hf(hf_config)
    except KeyError as e:
        raise ValueError(f"{source}: {model_type} config is missing the field {e}") from None
    except (TypeError, ValueError) as e:  # ModelConfig's checks name the qkv field, and the file is named here
        raise ValueError(f"{source}: {model_type} config: {e}") from None
    return path, folder, model_type, config


def from_hf(path, *, dtype: torch.dtype | None = None, num_labels: int | None = None):
    """A qkv model with the weights of a Hugging Face folder (see the module docstring for what it reads): a local
    path, or a hub id "org/name" resolved through huggingface_hub's cache (``qkv.files.resolve``).

    num_labels: a sequence-classification head of this many classes (encoders, ViT), as transformers'
    ``from_pretrained(path, num_labels=N)`` gives: the body and any pooler come from the folder, head weights the
    folder lacks (a base model has no classifier) start from qkv's initialisation (seed torch first for a fixed one);
    a head the folder holds must have N classes.

    Example:

        >>> import tempfile, torch, qkv
        >>> model = qkv.build(qkv.preset("llama-tiny")).eval()
        >>> with tempfile.TemporaryDirectory() as folder:          # any Hugging Face folder, here one qkv wrote
        ...     _ = qkv.to_hf(model, folder)
        ...     again = qkv.from_hf(folder).eval()
        >>> ids = torch.tensor([[1, 2, 3, 4]])
        >>> again(ids).shape, torch.allclose(again(ids), model(ids))   # (B, T, V), the same logits
        (torch.Size([1, 4, 256]), True)
    """
    path, folder, model_type, config = _read_config(path)
    conv = CONVERTERS[model_type]
    fresh: set[str] = set()
    if num_labels is not None and num_labels != config.num_labels:
        if config.family not in ("encoder", "vit") or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels={num_labels!r}: a classification head needs an encoder or ViT checkpoint "
                             f"and num_labels >= 1; {path} is a {config.family!r} model")
        if config.num_labels:
            raise ValueError(f"num_labels={num_labels}: {path} already has a classification head of "
                             f"{config.num_labels} classes; expected num_labels={config.num_labels}")
        without = set(blueprint(config).entries())  # (a second meta build, on this path only)
        config = config.replace(num_labels=num_labels)
        fresh = set(blueprint(config).entries()) - without  # the head's weights; those the folder holds are loaded
    plan = check_against_weights(config, conv, folder, optional=fresh)  # sizes config.json claims vs the files
    state = read_weights(folder)
    files.check_finite(state, source=folder)
    model = build(config, plan=plan)
    try:
        ours = conv.state_from_hf(state, config)
    except KeyError as e:
        raise ValueError(f"{path}: {e.args[0]}") from None
    files.check_dtypes(plan.dtypes(), {k: v.dtype for k, v in ours.items()}, source=folder)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    tied = {"head.weight"} if config.tie_embeddings else set()
    if fresh & set(missing):
        log.info("%s: new weights, not in the folder: %s", path, ", ".join(sorted(fresh & set(missing))))
    missing = [k for k in missing if k not in tied | fresh]
    if missing or unexpected:
        raise ValueError(f"{path}: the {model_type} map left qkv weights {missing} unset and produced unknown "
                         f"names {unexpected}")
    if config.tie_embeddings and hasattr(model, "head") and hasattr(model, "embed"):
        model.head.weight = model.embed.tokens.weight
    if dtype is not None:
        model.to(dtype)
    return model.eval()


_TRAINING_ONLY = {"dropout", "attn_dropout", "ffn_dropout", "extra"}


def hf_type_for(config: ModelConfig) -> str:
    """The Hugging Face model type that holds ``config`` exactly: the first exportable converter whose config comes
    back unchanged through ``config_to_hf`` -> ``config_from_hf`` (dropout rates and ``extra`` aside). A model
    built from a preset, which never came from Hugging Face, is exported under this type."""
    import dataclasses
    reasons = {}
    for model_type, conv in CONVERTERS.items():
        if conv.state_to_hf is None or conv.family != config.family:
            continue
        cfg = config.replace(extra={**config.extra, "hf_model_type": model_type})
        try:
            back = conv.config_from_hf({"model_type": model_type, "architectures": [conv.architecture],
                                        **conv.config_to_hf(cfg)})
        except (ValueError, KeyError, TypeError) as e:
            reasons[model_type] = str(e).split(";")[0]
            continue
        ignored = _TRAINING_ONLY | conv.unused
        changed = sorted(f.name for f in dataclasses.fields(cfg)
                         if f.name not in ignored and getattr(back, f.name) != getattr(cfg, f.name))
        if not changed:
            return model_type
        reasons[model_type] = f"would change {changed}"
    raise ValueError("no Hugging Face architecture holds this model exactly: "
                     + "; ".join(f"{t}: {r}" for t, r in reasons.items()))


def describes(hf_config: dict, config: ModelConfig) -> bool:
    """Whether a config.json (a dict) describes exactly the model of ``config``: its converter reads it back as
    ``config``, dropout rates, ``extra`` and the fields the architecture never reads aside."""
    import dataclasses
    conv = CONVERTERS.get(hf_config.get("model_type"))
    if conv is None or config.extra.get("hf_model_type", hf_config.get("model_type")) != conv.model_type:
        return False
    try:
        back = conv.config_from_hf(hf_config)
    except (ValueError, KeyError, TypeError):
        return False
    ignored = _TRAINING_ONLY | conv.unused
    return all(getattr(back, f.name) == getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name not in ignored)


def check_against_weights(config: ModelConfig, conv: Converter, folder: Path, *,
                          optional: set[str] = frozenset()) -> Blueprint:
    """Check what config.json declares against the weights files, reading no tensor and building the model once on
    the meta device (its ``Blueprint``, returned for ``build``): the layer count against the files' layer indices,
    then the converter's map run on shape-only (meta) tensors against the shapes and dtypes qkv builds, and the
    memory the model needs. ValueError names the field or tensor."""
    found = read_weights(folder, shapes_only=True)
    for field, n in family_of(config).layer_counts(config).items():
        check_layer_count(found, n, field=f"{field} (the layer count in config.json)", source=folder)
    meta = {k: v if v.device.type == "meta" else torch.empty(v.shape, dtype=v.dtype, device="meta")
            for k, v in found.items()}
    try:
        ours = conv.state_from_hf(meta, config)
    except KeyError as e:
        raise ValueError(f"{folder}: {e.args[0]}") from None
    except (RuntimeError, NotImplementedError, TypeError):
        ours = None  # a map that needs values: the shapes are compared after loading instead
    plan = blueprint(config)
    if ours is not None:
        tied = {"head.weight"} if config.tie_embeddings else set()
        check_shapes(config, plan.shapes(), {k: tuple(v.shape) for k, v in ours.items()}, source=folder,
                     optional=plan.aliases() | tied | set(optional))
        files.check_dtypes(plan.dtypes(), {k: v.dtype for k, v in ours.items()}, source=folder)
    plan.check_fits(source=str(folder / "config.json"))
    return plan


def to_hf(model, path, *, source_config: dict | None = None, unmapped: StateDict | None = None) -> Path:
    """Write ``model`` as a Hugging Face folder (config.json + model.safetensors) that ``transformers`` loads.
    A model that did not come from Hugging Face (``config.extra['hf_model_type']`` unset, e.g. built from a
    preset) goes out as the architecture that holds its config exactly (``hf_type_for``).

    source_config: the config.json the model came from, when it still ``describes`` the model: its other fields
    (its ``architectures``: BertForPreTraining rather than the BertForMaskedLM qkv would name) are kept, the ones
    qkv writes win. unmapped: tensors no qkv weight holds (BERT's pooler without a classifier), written as they are
    beside the mapped ones (``qkv.hub.carry``); a name the map writes too is refused.

    Example:

        >>> import tempfile, qkv
        >>> from qkv.files import read_json
        >>> model = qkv.build(qkv.preset("llama-tiny"))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = qkv.to_hf(model, folder)
        ...     files, config = sorted(p.name for p in path.iterdir()), read_json(path / "config.json")
        >>> files, config["model_type"], config["num_key_value_heads"]
        (['config.json', 'model.safetensors'], 'llama', 2)
    """
    from safetensors.torch import save_file
    config = model.config
    model_type = config.extra.get("hf_model_type")
    if model_type is None:
        model_type = hf_type_for(config)
        config = config.replace(extra={**config.extra, "hf_model_type": model_type})
    conv = CONVERTERS.get(model_type)
    if conv is None or conv.state_to_hf is None:
        exportable = sorted(t for t, c in CONVERTERS.items() if c.state_to_hf is not None)
        raise ValueError(f"cannot export this model to Hugging Face: its hf_model_type is {model_type!r}; "
                         f"exportable types: {exportable} (set config.extra['hf_model_type'])")
    if conv.family != config.family:
        raise ValueError(f"cannot export this model as {model_type}: that architecture holds {conv.family!r} models, "
                         f"this one is {config.family!r} (set config.extra['hf_model_type'] to one of "
                         f"{sorted(t for t, c in CONVERTERS.items() if c.family == config.family)})")
    if source_config is not None and not describes(source_config, config):
        raise ValueError(f"source_config: a {source_config.get('model_type')!r} config.json that does not describe "
                         f"this model (its shape changed since); export without it")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_config = {"model_type": model_type, "architectures": [conv.architecture], **conv.config_to_hf(config)}
    if source_config is not None:
        hf_config = {**source_config, **hf_config, "architectures": source_config.get("architectures")
                     or hf_config["architectures"]}
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    state = {k: v.detach().contiguous() for k, v in conv.state_to_hf(model.state_dict(), config).items()}
    clash = sorted(set(state) & set(unmapped or {}))
    if clash:
        raise ValueError(f"unmapped: {clash[:5]} are weights the {model_type} map writes itself; expected only "
                         f"tensors no qkv weight holds")
    state.update({k: v.detach().contiguous() for k, v in (unmapped or {}).items()})
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
