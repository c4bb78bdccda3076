"""``qkv.to_hf`` on models that never came from Hugging Face: a model built from a preset goes out as the
architecture that holds its config exactly, transformers loads the folder, and both give the same outputs."""
import pytest
import torch

import qkv
from qkv.hub.hf import hf_type_for

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-4


def _random(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms and biases away from 1 / 0, so a swap would show
    return model.eval()


def _ids(cfg, B=2, T=9):
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(3))


def _outputs(name, ours, theirs):
    """(qkv's, transformers') outputs on the same inputs, for the preset's family."""
    cfg = ours.config
    with torch.no_grad():
        if cfg.family == "decoder":
            ids = _ids(cfg)
            return ours(ids), theirs(input_ids=ids).logits
        if cfg.family == "encoder_decoder":
            src, tgt = _ids(cfg), _ids(cfg, T=5)
            return ours(src, tgt), theirs(input_ids=src, decoder_input_ids=tgt).logits
        if cfg.family == "encoder":
            ids = _ids(cfg)
            return ours.mlm_logits(ours(ids)), theirs(input_ids=ids).logits
        pixels = torch.randn(2, cfg.num_channels, cfg.image_size, cfg.image_size)
        return ours(pixels), theirs(pixel_values=pixels).logits


PRESETS = {"gpt2-tiny": "gpt2", "llama-tiny": "llama", "t5-tiny": "t5", "marian-tiny": "marian",
           "mbart-tiny": "mbart", "bert-tiny": "bert", "vit-tiny": "vit"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_model_exports_and_transformers_gives_its_outputs(tmp_path, name):
    ours = _random(qkv.build(qkv.preset(name)))
    assert "hf_model_type" not in ours.config.extra
    qkv.to_hf(ours, tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert theirs.model_type == PRESETS[name]
    cls = getattr(transformers, theirs.architectures[0])
    got, ref = _outputs(name, ours, cls.from_pretrained(tmp_path).eval())
    assert (got - ref).abs().max().item() < TOL


@pytest.mark.parametrize("overrides, model_type", [(dict(window=3), "mistral"),
                                                   (dict(window=3, layer_pattern="WA", n_layers=4, qk_norm=True), "qwen3")])
def test_sliding_window_presets_export_as_an_architecture_with_windows(tmp_path, overrides, model_type):
    ours = _random(qkv.build(qkv.preset("llama-tiny", **overrides)))
    qkv.to_hf(ours, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.model_type == model_type
    ids = _ids(ours.config, T=23)  # longer than the window, so it matters
    with torch.no_grad():
        assert (ours(ids) - theirs(input_ids=ids).logits).abs().max().item() < TOL


def test_a_model_no_architecture_holds_is_refused_with_reasons():
    with pytest.raises(ValueError, match="no Hugging Face architecture holds this model exactly: .*llama: "):
        hf_type_for(qkv.preset("retnet-tiny"))
