"""Decoding steps of every mixer (each recurrent and hybrid preset, softmax attention full and windowed, and one
stack holding every mixer), through growing and static caches, read nothing back to the host: no .item(), bool(tensor),
int(tensor), .tolist() or .numpy() per token, so a GPU never waits for the CPU between tokens. The probe wraps those
Tensor methods; it is shown to see the reads an unguarded step makes (the value checks)."""
import pytest
import torch

import qkv
from qkv.config import PATTERN_LETTERS
from qkv.ops.checks import trusted_values

PRESETS = ("linear-tiny", "retnet-tiny", "rwkv4-tiny", "hybrid-tiny", "memory-tiny", "rwkv5-tiny", "rwkv6-tiny",
           "rwkv7-tiny", "gla-tiny", "hgrn2-tiny", "deltanet-tiny", "gated-deltanet-tiny", "gated-deltanet-h1-tiny", "mamba2-tiny",
           "gpt2-tiny", "llama-tiny")
EVERY = "".join(dict.fromkeys(PATTERN_LETTERS))  # one block of each mixer, sliding-window attention included
_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


def _probe(monkeypatch):
    """Record every host read made through the Tensor methods above."""
    seen = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _name=name, _original=original, **kwargs):
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return seen


def _steps(model, cache, token, n):
    for _ in range(n):
        token = model(token, cache, last_only=True)[:, -1:].argmax(-1)  # (B, 1), stays a tensor
    return token


def _build(name):
    if name == "every":
        return qkv.build(qkv.preset("gla-tiny", layer_pattern=EVERY, n_layers=len(EVERY), window=3, position="none",
                                    rwkv_ranks={"mix": 8, "decay": 16, "a": 16, "v": 8, "gate": 16}))
    return qkv.build(qkv.preset(name))


@pytest.mark.parametrize("name, static", [(n, False) for n in PRESETS] + [("every", False), ("every", True),
                                                                         ("llama-tiny", True)])
def test_decoding_steps_make_no_host_reads(name, static, monkeypatch):
    torch.manual_seed(0)
    model = _build(name).eval()
    prompt = torch.randint(0, 256, (2, 70))  # longer than a memory segment (64): its buffer has wrapped once
    with torch.no_grad():
        cache = model.new_cache(2, 80, static=True) if static else model.new_cache(2)
        token = model(prompt, cache)[:, -1:].argmax(-1)
        token = _steps(model, cache, token, 2)  # first steps allocate what they need
        seen = _probe(monkeypatch)
        with trusted_values():  # what qkv.generate does around its steps
            _steps(model, cache, token, 4)
        assert seen == []
        _steps(model, cache, token, 1)  # unguarded, value checks read (token ids at least): the probe sees them
        assert "__bool__" in seen


@pytest.mark.parametrize("kwargs", [dict(), dict(do_sample=True), dict(no_repeat_ngram_size=2)], ids=str)
def test_a_generate_run_reads_the_host_a_fixed_number_of_times(kwargs, monkeypatch):
    """The loop around the steps (the non-finite check included: an accumulator on the device) reads nothing back
    per token when no row can finish: 72 tokens take the reads of 8, plus one read of the accumulator per 32 steps."""
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("llama-tiny")).eval()
    prompt = torch.randint(0, 256, (2, 5))

    def reads(n):
        seen = _probe(monkeypatch)
        qkv.generate(model, prompt, max_new_tokens=n, eos_token_id=(), **kwargs)
        monkeypatch.undo()
        return len(seen)
    short, long = reads(8), reads(72)
    assert short > 0 and long - short <= 72 // 32
