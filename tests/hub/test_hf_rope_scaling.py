"""RoPE context extension as transformers defines it (linear, dynamic, yarn, llama3, longrope): a tiny random
Llama with each ``rope_parameters`` variant, saved, loaded by the production converter (qkv.from_hf), gives
transformers' logits at positions past ``original_max_position_embeddings``."""
import pytest
import torch

import qkv
from qkv.ops.rope import ROPE_SCALINGS, check_rope_scaling

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-4
V, ORIGINAL, T = 97, 16, 41  # T well past the original context of 16 positions

VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    # dynamic grows the base past max_position_embeddings, so that is the short context here
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn_mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                    "beta_fast": 8, "beta_slow": 2, "mscale": 2.0, "mscale_all_dim": 1.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL},
    "longrope": {"rope_type": "longrope", "long_factor": [1.0, 2.0, 3.0, 4.5], "short_factor": [1.0, 1.1, 1.2, 1.3],
                 "original_max_position_embeddings": ORIGINAL},
}


def _llama(params, theta=10000.0):
    max_pos = ORIGINAL if params["rope_type"] == "dynamic" else 64
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=max_pos,
                                      rope_parameters={**params, "rope_theta": theta})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def max_diff(name, folder):
    """Max |logits(transformers) - logits(qkv.from_hf)| over a T-token batch (the figure the report quotes)."""
    hf_model = _llama(VARIANTS[name], theta=500000.0 if name == "llama3" else 10000.0)
    hf_model.save_pretrained(folder)
    ours = qkv.from_hf(folder)
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (hf_model(input_ids=ids).logits - ours(ids)).abs().max().item(), hf_model, ours, ids


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_scaled_rope_logits_match_transformers_past_the_original_context(tmp_path, name):
    diff, _, ours, ids = max_diff(name, tmp_path)
    assert ours.config.rope_scaling["rope_type"] == VARIANTS[name]["rope_type"]
    assert diff < TOL
    # the scaling is exercised: plain RoPE gives other logits at these positions
    plain = qkv.build(ours.config.replace(rope_scaling=None)).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert (plain(ids) - ours(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["dynamic", "longrope"])
def test_length_dependent_scaling_decodes_like_transformers_cache(tmp_path, name):
    """dynamic and longrope pick their frequencies from each call's longest position, so a cached run differs
    from a full pass, in transformers too: step by step, both agree."""
    _, hf_model, ours, ids = max_diff(name, tmp_path)
    with torch.no_grad():
        cache, hf_cache = ours.new_cache(2), transformers.DynamicCache(config=hf_model.config)
        got = [ours(ids[:, :7], cache)] + [ours(ids[:, i:i + 1], cache) for i in range(7, T)]
        ref = [hf_model(input_ids=ids[:, :7], past_key_values=hf_cache, use_cache=True).logits]
        ref += [hf_model(input_ids=ids[:, i:i + 1], past_key_values=hf_cache, use_cache=True).logits
                for i in range(7, T)]
    assert (torch.cat(ref, 1) - torch.cat(got, 1)).abs().max() < TOL


@pytest.mark.parametrize("name", ["linear", "yarn", "llama3"])
def test_scaled_rope_exports_back(tmp_path, name):
    _, hf_model, ours, ids = max_diff(name, tmp_path / "in")
    qkv.to_hf(ours, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(input_ids=ids).logits - hf_model(input_ids=ids).logits).abs().max() < TOL


def test_every_registered_variant_is_tested():
    assert {v["rope_type"] for v in VARIANTS.values()} == set(ROPE_SCALINGS)


@pytest.mark.parametrize("bad, match", [({"rope_type": "ntk"}, "rope_type must be one of"),
                                        ({"rope_type": "yarn", "factor": 2.0}, "missing"),
                                        ({"rope_type": "linear", "factor": -1.0}, "factor must be a number > 0"),
                                        ({"rope_type": "longrope", "long_factor": [1.0], "short_factor": [1.0],
                                          "original_max_position_embeddings": 8}, "rotary_dim / 2")])
def test_bad_scaling_is_rejected_with_the_key_named(bad, match):
    with pytest.raises(ValueError, match=match):
        check_rope_scaling(bad, rotary_dim=8)


def test_config_rejects_scaling_without_rope():
    with pytest.raises(ValueError, match="needs position='rope'"):
        qkv.preset("gpt2-tiny", rope_scaling={"rope_type": "linear", "factor": 2.0})
