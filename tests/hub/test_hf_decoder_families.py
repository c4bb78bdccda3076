"""Qwen3 (q/k RMSNorm), Gemma 2 and Gemma 3 (local sliding-window and global layers alternating, sandwich norms,
(1 + w) RMSNorm, scaled embeddings, query_pre_attn_scalar, soft-capped attention and output logits, Gemma 3's
local RoPE base): tiny random transformers models, saved, loaded by the production converter, give the same logits,
and decoding through qkv's cache gives its own full pass."""
import pytest
import torch

import qkv

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-4
V, T = 97, 23  # T > 4 windows of 5


def _random(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Gemma stores its gains around 0 ((1 + w) at run time); Qwen3's norms are Llama's, around 1
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and "Gemma" not in type(model).__name__ else 0.0))
    return model.eval()


SMALL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, head_dim=8, max_position_embeddings=64)
MODELS = {
    "qwen3": lambda: ("Qwen3ForCausalLM", transformers.Qwen3Config(**SMALL)),
    "qwen3_sliding": lambda: ("Qwen3ForCausalLM", transformers.Qwen3Config(
        **SMALL, use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "gemma2": lambda: ("Gemma2ForCausalLM", transformers.Gemma2Config(
        **SMALL, sliding_window=5, query_pre_attn_scalar=12, attn_logit_softcapping=3.0, final_logit_softcapping=5.0)),
    "gemma3": lambda: ("Gemma3ForCausalLM", transformers.Gemma3TextConfig(
        **SMALL, sliding_window=5, query_pre_attn_scalar=12,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}


def load(name, folder):
    cls, config = MODELS[name]()
    hf_model = _random(getattr(transformers, cls)(config))
    hf_model.save_pretrained(folder)
    return hf_model, qkv.from_hf(folder)


def _ids():
    return torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))


def max_diff(name, folder):
    """Max |logits(transformers) - logits(qkv.from_hf)| (the figure the report quotes)."""
    hf_model, ours = load(name, folder)
    with torch.no_grad():
        return (hf_model(input_ids=_ids()).logits - ours(_ids())).abs().max().item()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_transformers(tmp_path, name):
    assert max_diff(name, tmp_path) < TOL


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("static", [False, True], ids=["rolling", "static"])
def test_cached_decoding_equals_full_pass(tmp_path, name, static):
    _, ours = load(name, tmp_path)
    ids = _ids()
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(2, max_len=T, static=True) if static else ours.new_cache(2)
        steps = [ours(ids[:, :6], cache)] + [ours(ids[:, i:i + 1], cache) for i in range(6, T)]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


def test_fields_come_from_the_config_not_the_name(tmp_path):
    _, gemma2 = load("gemma2", tmp_path / "g2")
    c = gemma2.config
    assert (c.layer_pattern, c.window, c.norm_offset, c.sandwich_norm, c.scale_embeddings) == ("WA", 4, 1.0, True, True)
    assert (c.attn_softcap, c.logit_softcap, c.attn_scale) == (3.0, 5.0, 12 ** -0.5)
    _, gemma3 = load("gemma3", tmp_path / "g3")
    assert (gemma3.config.layer_pattern, gemma3.config.qk_norm, gemma3.config.rope_local_base) == ("WWA", True, 10000.0)
    assert gemma3.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    _, qwen = load("qwen3_sliding", tmp_path / "q")
    assert (qwen.config.layer_pattern, qwen.config.qk_norm) == ("AWW", True)


@pytest.mark.parametrize("change", [dict(attn_softcap=None), dict(logit_softcap=None), dict(layer_pattern=None),
                                   dict(sandwich_norm=False), dict(norm_offset=0.0)])
def test_each_gemma_feature_is_exercised(tmp_path, change):
    """The parity above is only a test of a feature if dropping it changes the logits."""
    _, ours = load("gemma2", tmp_path)
    config = ours.config.replace(**change)
    other = qkv.build(config).eval()
    other.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        assert (other(_ids()) - ours(_ids())).abs().max() > 1e-3


def test_gemma3_local_rope_base_is_exercised(tmp_path):
    _, ours = load("gemma3", tmp_path)
    other = qkv.build(ours.config.replace(rope_local_base=None)).eval()
    other.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert (other(_ids()) - ours(_ids())).abs().max() > 1e-3


def test_qwen3_exports_back(tmp_path):
    hf_model, ours = load("qwen3_sliding", tmp_path / "in")
    qkv.to_hf(ours, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(input_ids=_ids()).logits - hf_model(input_ids=_ids()).logits).abs().max() < TOL
