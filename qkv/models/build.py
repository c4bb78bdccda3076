"""Building and loading models: ``qkv.build(config)``, ``qkv.load(path)``, by the family records of registry.py."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import files
from ..config import ModelConfig
from .common import CONFIG_FILE, TRAINER_STATE_FILE, WEIGHTS_FILE, QKVModel, check_names, load_config
from .registry import family_of
from .sizing import Blueprint, blueprint, check_layer_count, check_shapes


def build(config: ModelConfig, *, plan: Blueprint | None = None) -> QKVModel:
    """A freshly initialised model for ``config``. A model that cannot fit in the memory the machine has is
    refused before anything is allocated (its ``Blueprint``, from a build on the meta device, sizes it). plan: the
    blueprint of ``config`` when the caller has it already (a load checked the file against it): not made again.

    Example:

        >>> import torch, qkv
        >>> model = qkv.build(qkv.preset("llama-tiny"))         # freshly initialised
        >>> logits = model(torch.tensor([[1, 2, 3, 4, 5]]))       # (B, T) ids -> (B, T, V)
        >>> type(model).__name__, logits.shape
        ('DecoderLM', torch.Size([1, 5, 256]))
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build needs a qkv.ModelConfig, got {type(config).__name__}")
    record = family_of(config)
    check_names(config)
    if plan is not None and plan.config is not config:
        raise ValueError("build(config, plan=...): the plan was made for another config; expected blueprint(config)")
    if torch.get_default_device().type != "meta":
        (plan or blueprint(config)).check_fits()
    return record.model(config)


def load(path, *, device=None, dtype=None) -> QKVModel:
    """A model saved by ``model.save(path)``: config.json + model.safetensors.

    Before anything is built the folder is checked: its files stay inside it (no links elsewhere), they match the
    sha256 in manifest.json when there is one, the weights file is whole, and config.json describes its tensors
    (layer count, every shape, floating-point weights where the model keeps floats); after loading, every weight
    is finite. ValueError names the file and what differs.

    Example:

        >>> import tempfile, torch, qkv
        >>> model = qkv.build(qkv.preset("gpt2-tiny")).eval()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = model.save(folder)                          # config.json + model.safetensors
        ...     again = qkv.load(folder).eval()
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> again.config == model.config, torch.equal(again(ids), model(ids))
        (True, True)
    """
    from safetensors.torch import load_model  # optional dependency: read only when a model is loaded
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such qkv model folder" if not path.exists() else
                                f"{path}: is a file; expected a qkv model folder (config.json + {WEIGHTS_FILE})")
    config = load_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a qkv model folder: {WEIGHTS_FILE} is missing")
    files.inside(path, weights, what=WEIGHTS_FILE)
    # a training checkpoint always carries its manifest: one without it has been tampered with
    files.verify_manifest(path, required=(path / TRAINER_STATE_FILE).exists(), must_list=(CONFIG_FILE, WEIGHTS_FILE))
    found = files.safetensors_header(weights)
    plan = check_weights_match(config, found, source=weights)
    model = build(config, plan=plan)
    if torch.get_default_device().type == "meta":
        return model.eval()  # shapes only (``qkv info``): meta tensors hold no weights to load
    load_model(model, str(weights), device=str(device) if device else "cpu")
    files.check_finite(model.state_dict(), source=weights)  # qkv's own folders are checked like foreign ones
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def check_weights_match(config: ModelConfig, found: dict[str, tuple], *, source) -> Blueprint:
    """Refuse a config that does not describe the tensors ``found`` (qkv's names -> (dtype, shape), dtype a torch
    dtype or a safetensors name): more layers than the file has, a shape that differs, integers where the model
    keeps floats (or the reverse), or a model too large for memory. Cheap checks first, so a config claiming a
    million layers is refused before a single layer object is made. Returns the config's blueprint (one meta build),
    for ``build(config, plan=...)``."""
    for field, n in family_of(config).layer_counts(config).items():
        check_layer_count(found, n, field=field, source=source)
    plan = blueprint(config)
    entries = plan.entries()  # one per weight: the layer count is bounded by the file's now
    check_shapes(config, {k: shape for k, (shape, _) in entries.items()}, {k: shape for k, (_, shape) in found.items()},
                 source=source, optional=plan.aliases())
    files.check_dtypes({k: dtype for k, (_, dtype) in entries.items()}, {k: dt for k, (dt, _) in found.items()},
                       source=source)
    plan.check_fits(source=str(source))
    return plan
