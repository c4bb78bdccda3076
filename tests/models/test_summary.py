"""``qkv info``'s summary (qkv/models/summary.py): its numbers against counts made apart from it (the parameters
one by one, a KV cache and a linear-attention state by the papers' formulas, the caches a real decode fills), its
units at their edges, the warning past the learned positions, and ``--json`` keeping the whole config."""
import json

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.models.sizing import SkipMetaInit
from qkv.models.summary import bytes_text, count_text, decoding_memory, format_summary, summarize
from qkv.nn.cache import KVCache, RecurrentCache


def meta(name, **fields):
    with torch.device("meta"), SkipMetaInit():
        return qkv.build(qkv.preset(name, **fields))


@pytest.mark.parametrize("n, text", [(0, "0"), (999, "999"), (1000, "1.00 K"), (1234, "1.23 K"), (241_776, "242 K"),
                                     (999_499, "999 K"), (999_500, "1.00 M"), (1_234_567, "1.23 M"),
                                     (6_738_415_616, "6.74 B"), (124_439_808, "124 M")])
def test_counts_read_in_three_figures(n, text):
    assert count_text(n) == text


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1000 B"), (1023, "1023 B"),
                                     (1024, "1.00 KiB"), (1023 * 1024, "1023 KiB"), (1024 * 1024 - 1, "1.00 MiB"),
                                     (1024 ** 2, "1.00 MiB"), (int(25.1 * 2 ** 30), "25.1 GiB"),
                                     (4 * 2 ** 30, "4.00 GiB"), (6.74e9, "6.28 GiB")])
def test_bytes_read_in_binary_units(n, text):
    assert bytes_text(n) == text


def test_a_negative_count_is_refused():
    with pytest.raises(ValueError, match="expected a count >= 0"):
        count_text(-1)


@pytest.mark.parametrize("name", ["gpt-char-tiny", "t5-tiny", "rnnsearch-tiny", "vit-tiny", "bert-tiny"])
def test_parameters_and_weights_are_the_sum_over_distinct_tensors(name):
    model = qkv.build(qkv.preset(name))
    distinct = {id(p): p for p in model.parameters()}.values()
    s = summarize(model)
    assert s.parameters == sum(p.numel() for p in distinct)
    assert s.weights == sum(p.numel() * p.element_size() for p in distinct) and s.training == 16 * s.parameters


@pytest.mark.parametrize("T", [1, 37, 64])
def test_the_kv_cache_is_layers_times_keys_and_values_times_positions(T):
    """gpt-char-tiny: 4 layers, 4 heads of 32; each position keeps one key and one value row per head (fp32)."""
    cfg = qkv.preset("gpt-char-tiny")
    d = summarize(meta("gpt-char-tiny"), T).decoding
    assert d.kv_cache == cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * T * 4 == 4 * 2 * 4 * 32 * T * 4
    assert d.kv_layers == 4 and d.state == d.state_layers == d.source == 0


def test_a_sliding_window_caps_the_cache_and_a_recurrent_state_is_flat():
    """gated-deltanet-h1-tiny (EWEW, window 64): the W layers keep 64 positions however long the context."""
    cfg = qkv.preset("gated-deltanet-h1-tiny")
    short, long = (summarize(meta("gated-deltanet-h1-tiny"), T).decoding for T in (16, 65536))
    assert short.kv_cache == 2 * 2 * cfg.n_kv_heads * cfg.head_dim * 16 * 4
    assert long.kv_cache == 2 * 2 * cfg.n_kv_heads * cfg.head_dim * cfg.window * 4
    assert short.state == long.state > 0 and long.state_layers == 2


def test_linear_attention_state_is_s_and_z_per_head():
    """Katharopoulos et al. 2020, sec. 3.4: per head the state S = sum phi(k) v^T (D x D) and z = sum phi(k) (D)."""
    cfg = qkv.preset("linear-tiny")
    d = summarize(meta("linear-tiny"), 4096).decoding
    assert d.state == cfg.n_layers * cfg.n_heads * (cfg.head_dim ** 2 + cfg.head_dim) * 4 and d.kv_cache == 0


@pytest.mark.parametrize("name", ["hybrid-tiny", "marian-tiny", "rnnsearch-tiny", "rwkv7-tiny", "mamba2-tiny"])
def test_the_meta_measure_equals_the_caches_a_real_decode_fills(name):
    """A real model decodes 5 tokens: its recurrent states' bytes, and its KV caches' bytes per position (keys and
    values actually written), are what the summary measured on a meta build."""
    model = qkv.build(qkv.preset(name)).eval()
    T, src = 5, torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
    cache = model.new_cache(1)
    decoding = qkv.models.registry.family_of(model.config).decoding
    with torch.no_grad():
        state = decoding.prefill(model, src, None, cache, T + 1).state
        for _ in range(T - 1):
            decoding.step(model, torch.tensor([[5]]), cache, state)
            state = decoding.advance(state)
    kv = sum(2 * layer.mixer.k[:, :, 0].numel() * 4 * min(layer.mixer.length, layer.mixer.window or T)
             for layer in cache.layers if isinstance(layer.mixer, KVCache))
    rec = sum(t.numel() * 4 for layer in cache.layers if isinstance(layer.mixer, RecurrentCache)
              for t in layer.mixer.state.values())
    d = decoding_memory(meta(name), T)
    assert (d.kv_cache, d.state) == (kv, rec)
    if decoding.has_source:  # cross keys and values of the 7-token source, scaled to a T-token one
        cross = sum(layer.cross.k.numel() + layer.cross.v.numel() for layer in cache.layers if layer.cross is not None)
        memory = cache.memory.numel() if getattr(cache, "memory", None) is not None else 0
        assert d.source == (cross + memory) * 4 * T // src.shape[1]


def test_the_warning_says_when_seq_len_passes_the_learned_positions():
    model = meta("gpt-char-tiny")  # 64 learned positions
    assert summarize(model, 64).warnings == ()
    (warning,) = summarize(model, 65).warnings
    assert "--seq-len 65" in warning and "64 learned positions" in warning
    assert summarize(meta("llama-tiny"), 10 ** 6).warnings == ()  # RoPE: no table to run past


def test_the_text_holds_the_numbers_and_the_family_lines():
    text = format_summary(summarize(meta("gpt2"), 1024))
    assert "parameters:       124 M (124,439,808; non-embedding 85.1 M)" in text
    assert "KV cache:         72.0 MiB at 1,024 tokens" in text  # 12 layers x 2 x 768 x 1024 x 4 bytes
    assert "weights memory:   475 MiB (float32)" in text and "stack:            AAAAAAAAAAAA" in text
    assert "decoding memory:  none kept" in format_summary(summarize(meta("bert-tiny")))
    assert "6.74 B" in format_summary(summarize(meta("llama2-7b")))


def test_info_prints_the_summary_and_warns_on_stderr(capsys):
    assert main(["info", "--preset", "gpt-char-tiny", "--seq-len", "100"]) == 0
    out, err = capsys.readouterr()
    assert "KV cache:" in out and '"activation"' not in out  # the config only with --json
    assert err.count("\n") == 1 and err.startswith("qkv info: warning: --seq-len 100 is past the 64 learned")
    assert main(["info", "--preset", "gpt-char-tiny"]) == 0
    assert capsys.readouterr().err == ""


def test_info_json_holds_the_summary_and_the_whole_config(capsys):
    assert main(["info", "--preset", "linear-tiny", "--seq-len", "300", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"] == json.loads(qkv.preset("linear-tiny").to_json())
    assert data["summary"]["decoding"]["state"] == 2 * 4 * (16 * 16 + 16) * 4 and data["summary"]["seq_len"] == 300
