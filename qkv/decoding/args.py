"""The command line's decoding flags, generated from ``GenerationConfig``: one flag per field that names one
(``flag`` in its metadata), its help the field's comment and the command's default, its value checked by the
config's own rules. ``qkv generate`` and ``qkv translate`` take them; a new field with a flag appears in both.

Every flag defaults to None, so a command can tell the flags given from the rest: they apply over a base config
(the command's defaults, or a Hugging Face folder's generation_config.json)."""
from __future__ import annotations

import argparse
import dataclasses
import re

from ..config import field_help
from .config import GenerationConfig, settings_fields

SPECULATIVE = ("num_draft_tokens", "prompt_lookup_num_tokens")  # flags of commands that continue a prompt
FOLDER_SETS = ("GenerationConfig's fields (qkv/decoding/config.py). With --hf, the folder's generation_config.json sets "
               "the defaults of the settings it holds, as transformers' generate reads them; a flag wins over it.")


def flag_fields(*, speculative: bool = False) -> list[dataclasses.Field]:
    """The fields that are flags (the speculative ones only when asked)."""
    return [f for f in settings_fields() if f.metadata.get("flag") and (speculative or f.name not in SPECULATIVE)]


def add_decoding_arguments(parser, defaults: GenerationConfig, *, speculative: bool = False) -> None:
    """One flag per flagged field of GenerationConfig, in a group of their own; help: the field's comment and
    ``defaults``' value (the command's)."""
    docs = field_help(GenerationConfig)
    group = parser.add_argument_group("decoding", FOLDER_SETS)
    for f in flag_fields(speculative=speculative):
        doc = re.sub(r"\s*\(unset: [^)]*\)$", "", docs.get(f.name, ""))  # the command's default says it
        value = getattr(defaults, f.name)
        kw = dict(default=None, dest=f.name, help=f"{doc} (default: {'off' if value is None else value})".replace(
            "%", "%%"))
        annotation = str(f.type).replace(" ", "")
        if annotation == "bool":
            group.add_argument(f.metadata["flag"], action=argparse.BooleanOptionalAction, **kw)
        else:
            kind = int if annotation.startswith("int") else float
            group.add_argument(f.metadata["flag"], type=kind, metavar=kind.__name__.upper(), **kw)


def config_from_arguments(args, base: GenerationConfig, *, speculative: bool = False) -> GenerationConfig:
    """``base`` with the flags given applied; sampling asked without a beam count takes one beam (over a base of
    several). ValueError puts the flags behind a refusal in front of it: "--top-p 2: top_p must be ..."."""
    fields = flag_fields(speculative=speculative)
    given = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name, None) is not None}
    if given.get("do_sample") and "num_beams" not in given:
        given["num_beams"] = 1
    try:
        return base.replace(**given)
    except ValueError as e:
        raise ValueError(_name_flags(str(e), given, fields)) from None


def _name_flags(message: str, given: dict, fields) -> str:
    """The flags given whose field the message names, with their values, in front of it."""
    named = []
    for f in fields:
        if f.name in given and re.search(rf"(?<![\w-]){f.name}(?![\w-])", message):
            value = given[f.name]
            named.append(f.metadata["flag"] if isinstance(value, bool) else f"{f.metadata['flag']} {value}")
    return (", ".join(named) + ": " + message) if named else message
