"""A Hugging Face folder's decoding defaults, as transformers' ``generate`` reads them: generation_config.json,
else the generation fields of config.json, over transformers' own defaults (greedy, max_length 20, top_k 50 when
sampling, ...). ``qkv generate --hf`` / ``qkv translate --hf`` decode with them unless a flag says otherwise, so both
print the same text.

Settings qkv does not implement are refused when a folder sets them to anything but their neutral value: decoding
on without them would print something else than transformers does.
"""
from __future__ import annotations

from pathlib import Path

from ..files import inside, read_json

# transformers' GenerationConfig defaults for what qkv honours (max_length None: 20 new tokens, see new_tokens)
DEFAULTS = dict(max_length=None, max_new_tokens=None, min_length=0, min_new_tokens=None, do_sample=False, num_beams=1,
                temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0, length_penalty=1.0,
                no_repeat_ngram_size=0, early_stopping=False, bad_words_ids=None, forced_bos_token_id=None,
                forced_eos_token_id=None, renormalize_logits=False, num_return_sequences=1, eos_token_id=None,
                pad_token_id=None, bos_token_id=None, decoder_start_token_id=None)
# settings that change the output, with their neutral values; qkv refuses a folder that sets one otherwise
UNSUPPORTED = dict(num_beam_groups=1, diversity_penalty=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                   min_p=None, top_h=None, encoder_repetition_penalty=1.0, encoder_no_repeat_ngram_size=0,
                   suppress_tokens=None, begin_suppress_tokens=None, sequence_bias=None, force_words_ids=None,
                   constraints=None, exponential_decay_length_penalty=None, guidance_scale=None, penalty_alpha=None,
                   forced_decoder_ids=None, max_time=None, stop_strings=None, token_healing=False,
                   remove_invalid_values=False)




def new_tokens(settings: dict, prompt_length: int, max_positions: int | None) -> int:
    """How many tokens transformers' generate makes at most: max_new_tokens; else max_length minus the prompt
    (decoder-only) or the decoder-start token (encoder-decoder); with neither set, 20, within max_positions."""
    if settings.get("max_new_tokens") is not None:
        return int(settings["max_new_tokens"])
    if settings.get("max_length") is not None:
        return int(settings["max_length"]) - prompt_length
    total = 20 + prompt_length
    return (min(total, max_positions) if max_positions else total) - prompt_length


def generation_defaults(folder) -> dict:
    """transformers' names -> values for every setting in ``DEFAULTS``, read from the folder (see the module
    docstring). Raises ValueError naming a setting the folder uses that qkv does not implement."""
    folder = Path(folder)
    source = folder / "generation_config.json"
    if source.is_file():
        settings = read_json(inside(folder, source, what=source.name))
    else:  # older folders keep them in config.json
        source = folder / "config.json"
        settings = read_json(inside(folder, source, what=source.name))
        settings = {k: v for k, v in settings.items() if k in DEFAULTS or k in UNSUPPORTED}
    used = sorted(k for k, neutral in UNSUPPORTED.items() if k in settings and settings[k] not in (neutral, None))
    if used:
        raise ValueError(f"{source}: sets {used}, which qkv's decoding does not implement; its output would differ "
                         f"from transformers'")
    out = dict(DEFAULTS)
    out.update({k: v for k, v in settings.items() if k in DEFAULTS and v is not None})
    return out
