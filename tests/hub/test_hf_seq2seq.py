"""Encoder-decoder parity with Hugging Face: T5 (ReLU and gated GELU), Marian, MBART, through qkv.from_hf.

Each peer model is built from a tiny config with random weights (no download), saved with save_pretrained and
read back by the production converter; logits must agree within 1e-4 in float32, with source padding."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qkv  # noqa: E402
from qkv.models.encoder_decoder import EncoderDecoder  # noqa: E402

V, S, T = 61, 9, 7


def _perturb(model):
    """Random norms, biases and logits bias: a freshly initialised peer has ones and zeros there, which would
    hide a swapped or missing weight."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
        for name, b in model.named_buffers():
            if name == "final_logits_bias":
                b.normal_()
    return model.eval()


def _inputs():
    src = torch.randint(3, V, (2, S))
    mask = torch.ones(2, S, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    tgt = torch.randint(3, V, (2, T))
    return src, mask, tgt


def _t5(feed_forward_proj, **kw):
    cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                feed_forward_proj=feed_forward_proj, dropout_rate=0.0, **kw)
    return transformers.T5ForConditionalGeneration(cfg)


def _marian():
    cfg = transformers.MarianConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                    decoder_ffn_dim=48, max_position_embeddings=64, activation_function="swish",
                                    scale_embedding=True, pad_token_id=V - 1, decoder_start_token_id=V - 1,
                                    eos_token_id=0, dropout=0.0)
    return transformers.MarianMTModel(cfg)


def _mbart():
    cfg = transformers.MBartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3,
                                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                   decoder_ffn_dim=48, max_position_embeddings=64, activation_function="gelu",
                                   scale_embedding=True, dropout=0.0)
    return transformers.MBartForConditionalGeneration(cfg)


PEERS = {"t5": lambda: _t5("relu"), "t5-v1_1": lambda: _t5("gated-gelu", tie_word_embeddings=False),
         "marian": _marian, "mbart": _mbart}


@pytest.mark.parametrize("name", PEERS)
def test_logits_match_transformers_with_source_padding(name, tmp_path):
    peer = _perturb(PEERS[name]())
    peer.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert isinstance(ours, EncoderDecoder)
    src, mask, tgt = _inputs()
    with torch.no_grad():
        expected = peer(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        got = ours(src, tgt, mask)
        cache = ours.new_cache(2)
        stepped = torch.cat([ours(src, tgt[:, t: t + 1], mask, cache=cache) for t in range(T)], dim=1)
    diff = (got - expected).abs().max().item()
    assert diff < 1e-4, f"{name}: max abs difference {diff:.2e}"
    torch.testing.assert_close(stepped, expected, atol=1e-4, rtol=0)


def test_t5_relu_and_gated_configs_translate():
    relu = qkv.hub.hf_seq2seq._t5_config(_t5("relu").config.to_dict())
    gated = qkv.hub.hf_seq2seq._t5_config(_t5("gated-gelu", tie_word_embeddings=False).config.to_dict())
    assert (relu.activation, relu.scale_head, relu.tie_embeddings) == ("relu", True, True)
    assert (gated.activation, gated.scale_head) == ("geglu_tanh", False)
    assert relu.position == "relative" and relu.score == "dot" and relu.attn_scale == 1.0 and not relu.bias


def test_t5_v1_1_untied_head_is_read(tmp_path):
    """Checkpoints written before transformers tied T5's head always (the v1.1 releases) say
    tie_word_embeddings=false and carry their own lm_head.weight, applied without the d_model^-0.5 scale."""
    from safetensors.torch import load_file, save_file
    peer = _perturb(_t5("gated-gelu", tie_word_embeddings=False))
    peer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["tie_word_embeddings"] = False
    config.pop("scale_decoder_outputs", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(tmp_path / "model.safetensors")
    lm_head = torch.randn(V, 32) * 0.1
    weights["lm_head.weight"] = lm_head
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    ours = qkv.from_hf(tmp_path)
    assert not ours.config.tie_embeddings and not ours.config.scale_head
    src, mask, tgt = _inputs()
    with torch.no_grad():
        out = peer(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, output_hidden_states=True)
        hidden = out.decoder_hidden_states[-1]  # after the decoder's final norm
        torch.testing.assert_close(hidden @ peer.shared.weight.t(), out.logits, atol=1e-5, rtol=0)  # unscaled
        torch.testing.assert_close(ours(src, tgt, mask), hidden @ lm_head.t(), atol=1e-4, rtol=0)


def test_separate_marian_vocabularies_are_refused(tmp_path):
    cfg = _marian().config.to_dict()
    cfg.update(share_encoder_decoder_embeddings=False, decoder_vocab_size=V + 3)
    with pytest.raises(ValueError, match="share_encoder_decoder_embeddings"):
        qkv.hub.hf_seq2seq._bart_like_config(cfg)


@pytest.mark.parametrize("name", PEERS)
def test_to_hf_round_trip_loads_in_transformers(name, tmp_path):
    peer = _perturb(PEERS[name]())
    peer.save_pretrained(tmp_path / "in")
    ours = qkv.from_hf(tmp_path / "in")
    qkv.to_hf(ours, tmp_path / "out")
    back = type(peer).from_pretrained(tmp_path / "out").eval()
    src, mask, tgt = _inputs()
    with torch.no_grad():
        expected = ours(src, tgt, mask)
        got = back(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_to_hf_refuses_a_model_of_another_layout(tmp_path):
    model = qkv.build(qkv.preset("transformer-tiny", extra={"hf_model_type": "marian"}))
    with pytest.raises(ValueError, match="marian layout"):
        qkv.to_hf(model, tmp_path)
