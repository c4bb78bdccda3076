"""Decoding: one ``GenerationConfig`` (transformers' field names; the one place its defaults meet a model) and the
parts a run is made of, over any family's decode adapter (``qkv.models.decoding``):

    config.py       GenerationConfig: every setting, checked when made; ``resolved(model, prompt_length)``
    prefill.py      the input checked, the cache made, the prompt / source through the model once
    step.py         one token per row in, the next logits out (eager or compiled); ``Run``, a run's state
    sample.py       greedy decoding and sampling: scores -> the next token, the loop
    controls.py     transformers' logits controls and sampling filters (no_repeat_ngram_size, min_p, ...)
    beam.py         beam search; trace.py records it step by step (``beam_search_trace``)
    speculative.py  a draft (or prompt lookup) guesses, the model checks the guesses in one pass
    batch.py        many inputs batched by length under a token budget (sentences in, translations out:
                    ``qkv.tasks.seq2seq.translate``, which owns a translation model's text rules)
    finite.py       non-finite logits stop a decode, naming where they went non-finite
    sliding.py      past a decoder's learned positions: the last max_positions tokens, recomputed each step
    generate.py     ``generate`` and ``stream``, the entry points
    args.py         the command line's decoding flags, generated from GenerationConfig's fields
"""
from .batch import Decoded, generate_many, length_batches
from .config import GenerationConfig, Resolved
from .controls import LogitsControls, make_controls, top_k_top_p
from .generate import generate, stream
from .outputs import GenerateOutput, StreamChunk
from .sliding import SlidingContext, sliding_context
from .speculative import SpeculativeStats
from .step import packed_for_decoding
from .trace import BeamStep, BeamTrace, beam_search_trace

__all__ = ["GenerationConfig", "Resolved", "generate", "stream", "GenerateOutput", "StreamChunk",
           "beam_search_trace", "BeamTrace", "BeamStep", "SpeculativeStats", "generate_many", "length_batches",
           "Decoded", "LogitsControls", "make_controls", "top_k_top_p",
           "packed_for_decoding", "SlidingContext", "sliding_context"]
