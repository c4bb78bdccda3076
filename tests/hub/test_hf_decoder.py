"""Peer parity for decoder-only checkpoints: a tiny random transformers model, saved to a folder, loaded by the
production converter (qkv.from_hf), gives the same logits; exported back (qkv.to_hf), transformers loads it and
gives them again."""
import pytest
import torch

import qkv

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TOL = 1e-4
V, T = 97, 13


def _randomize(model):
    """Random values in every parameter (norm gains and biases too), so a swapped or missing weight shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and "norm" in str(p) else 0.0))
    return model.eval()


def _hf(cls_name, config_name, **kw):
    config = getattr(transformers, config_name)(**kw)
    return _randomize(getattr(transformers, cls_name)(config))


def _ids(B=2, T=T):
    return torch.randint(0, V, (B, T))


def _gpt2(**kw):
    return _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)


def _llama(model_type="llama", **kw):
    names = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "mistral": ("MistralForCausalLM", "MistralConfig"),
             "qwen2": ("Qwen2ForCausalLM", "Qwen2Config")}[model_type]
    return _hf(*names, vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, **kw)


def _max_diff(hf_model, ours, ids, **kw):
    with torch.no_grad():
        return (hf_model(input_ids=ids, **kw).logits - ours(ids)).abs().max().item()


@pytest.mark.parametrize("make", [_gpt2, lambda: _llama("llama"), lambda: _llama("mistral", sliding_window=5),
                                  lambda: _llama("qwen2")], ids=["gpt2", "llama_gqa", "mistral_window", "qwen2"])
def test_from_hf_logits_match(tmp_path, make):
    hf_model = make()
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert _max_diff(hf_model, ours, _ids()) < TOL


def test_mistral_window_is_exercised(tmp_path):
    """The window test above is only a test if the window changes the result at this length."""
    hf_model = _llama("mistral", sliding_window=5)
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert ours.config.window == 4
    with torch.no_grad():
        full = qkv.build(ours.config.replace(window=None))
        full.load_state_dict(ours.state_dict())
        ids = _ids()
        assert (full(ids) - ours(ids)).abs().max() > 1e-3


def test_sharded_safetensors(tmp_path):
    hf_model = _llama("llama")
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert _max_diff(hf_model, qkv.from_hf(tmp_path), _ids()) < TOL


def test_pytorch_model_bin(tmp_path):
    """Older checkpoints hold a pickled state dict. transformers 5 writes only safetensors (it ignores
    safe_serialization=False), so the .bin is written the way transformers 4 did: torch.save(state_dict)."""
    hf_model = _gpt2()
    hf_model.save_pretrained(tmp_path, safe_serialization=False)
    if not (tmp_path / "pytorch_model.bin").is_file():
        (tmp_path / "model.safetensors").unlink()
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    assert _max_diff(hf_model, qkv.from_hf(tmp_path), _ids()) < TOL


def test_gpt2_left_padding_with_positions(tmp_path):
    hf_model = _gpt2()
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    ids = _ids(B=3)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :9] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    assert (ref[real] - got[real]).abs().max().item() < TOL
    # The padded rows really are ignored: the last real token sees the same logits as the unpadded prompt.
    with torch.no_grad():
        alone = ours(ids[2:, 9:])
    assert (alone[0, -1] - got[2, -1]).abs().max().item() < TOL


@pytest.mark.parametrize("make", [_gpt2, lambda: _llama("llama")], ids=["gpt2", "llama"])
def test_to_hf_round_trip(tmp_path, make):
    hf_model = make()
    hf_model.save_pretrained(tmp_path / "in")
    ours = qkv.from_hf(tmp_path / "in")
    qkv.to_hf(ours, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(hf_model)
    ids = _ids()
    with torch.no_grad():
        assert (back(input_ids=ids).logits - hf_model(input_ids=ids).logits).abs().max().item() < TOL
    assert _max_diff(back, ours, ids) < TOL
