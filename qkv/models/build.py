"""Building and loading models: ``qkv.build(config)``, ``qkv.load(path)``, by the family records of registry.py."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import safety
from ..config import ModelConfig
from .common import CONFIG_FILE, WEIGHTS_FILE, QKVModel, check_names, load_config
from .registry import family_of


def build(config: ModelConfig) -> QKVModel:
    """A freshly initialised model for ``config``. A model that cannot fit in the memory the machine has is
    refused before anything is allocated (building under ``torch.device("meta")`` allocates nothing)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build needs a qkv.ModelConfig, got {type(config).__name__}")
    record = family_of(config)
    check_names(config)
    if torch.get_default_device().type != "meta":
        safety.check_model_fits(config)
    return record.model(config)


def expected_shapes(config: ModelConfig) -> tuple[dict[str, tuple], set[str]]:
    """The weights a model of ``config`` holds, name -> shape, and the names that alias another (tied weights,
    stored once), from a build on the meta device: nothing is allocated. Check ``safety.check_model_fits`` first:
    the module objects themselves take memory."""
    with torch.device("meta"), safety.SkipMetaInit():  # no init on meta: it would import the compiler stack
        model = family_of(config).model(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    groups: dict[int, list[str]] = {}
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), []).append(name)
    return shapes, {n for names in groups.values() if len(names) > 1 for n in names}


def load(path, *, device=None, dtype=None) -> QKVModel:
    """A model saved by ``model.save(path)``: config.json + model.safetensors.

    Before anything is built the folder is checked: its files stay inside it (no links elsewhere), they match the
    sha256 in manifest.json when there is one, the weights file is whole, and config.json describes its tensors
    (layer count, every shape); ValueError names the file and what differs."""
    from safetensors.torch import load_model
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such qkv model folder" if not path.exists() else
                                f"{path}: is a file; expected a qkv model folder (config.json + {WEIGHTS_FILE})")
    config = load_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a qkv model folder: {WEIGHTS_FILE} is missing")
    safety.inside(path, weights, what=WEIGHTS_FILE)
    from ..checkpoint import STATE_FILE
    # a training checkpoint always carries its manifest: one without it has been tampered with
    safety.verify_manifest(path, required=(path / STATE_FILE).exists(), must_list=(CONFIG_FILE, WEIGHTS_FILE))
    found = safety.safetensors_header(weights)
    check_weights_match(config, {k: shape for k, (_, shape) in found.items()}, source=weights)
    model = build(config)
    if torch.get_default_device().type == "meta":
        return model.eval()  # shapes only (``qkv info``): meta tensors hold no weights to load
    load_model(model, str(weights), device=str(device) if device else "cpu")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def check_weights_match(config: ModelConfig, found: dict[str, tuple], *, source) -> None:
    """Refuse a config that does not describe the tensors ``found`` (name -> shape, qkv's names): more layers than
    the file has, or any shape that differs. Cheap checks first, so a config claiming a million layers is refused
    before a single layer object is made."""
    for field, n in family_of(config).layer_counts(config).items():
        safety.check_layer_count(found, n, field=field, source=source)
    expected, aliases = expected_shapes(config)  # a meta build: nothing allocated, the layer count bounded above
    safety.check_shapes(config, expected, found, source=source, optional=aliases)
    safety.check_model_fits(config, source=str(source))
