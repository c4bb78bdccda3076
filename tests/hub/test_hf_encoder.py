"""Peer parity for encoder checkpoints (BERT with its heads, sentence-transformers folders, ViT), the export
round trip, and the errors a bad folder gives."""
import json

import pytest
import torch

import qkv

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TOL = 1e-4
V, T = 89, 11


def _randomize(model):
    """Random values in every parameter (norm gains and biases, the MLM output bias), so a swapped or missing
    weight shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def _bert(cls_name="BertModel", **kw):
    config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32, **kw)
    return _randomize(getattr(transformers, cls_name)(config))


def _vit(cls_name="ViTForImageClassification", **kw):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                    image_size=16, patch_size=4, num_labels=5, **kw)
    return _randomize(getattr(transformers, cls_name)(config))


@pytest.fixture
def batch():
    ids = torch.randint(1, V, (3, T))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding, as BERT tokenizers pad
    mask[2, 2:] = 0
    types = (torch.arange(T) >= 5).long().expand(3, T)  # sentence A, then sentence B
    return ids, mask, types


def _hidden_diff(hf_model, ours, batch):
    ids, mask, types = batch
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, mask, token_type_ids=types)
    return (ref - got).abs().max().item()


def test_bert_model_hidden_states_with_padding(tmp_path, batch):
    hf_model = _bert("BertModel")
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert isinstance(ours, qkv.models.Encoder) and ours.mlm is None and ours.cls is None
    assert _hidden_diff(hf_model, ours, batch) < TOL


def test_bert_masked_lm_logits(tmp_path, batch):
    ids, mask, types = batch
    hf_model = _bert("BertForMaskedLM")
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert ours.mlm.decoder.weight is ours.embed.tokens.weight  # still tied after loading
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours.mlm_logits(ours(ids, mask, token_type_ids=types))
    assert (ref - got).abs().max().item() < TOL


def test_bert_sequence_classification_logits(tmp_path, batch):
    ids, mask, types = batch
    hf_model = _bert("BertForSequenceClassification", num_labels=3)
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert ours.config.num_labels == 3
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours.classify(ours(ids, mask, token_type_ids=types))
    assert got.shape == (3, 3)
    assert (ref - got).abs().max().item() < TOL


def _sentence_transformers_files(folder):
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))


def test_sentence_transformers_folder(tmp_path, batch):
    """Recent sentence-transformers folders keep a BertModel (keys without 'bert.') in the top folder."""
    hf_model = _bert("BertModel")
    hf_model.save_pretrained(tmp_path)
    _sentence_transformers_files(tmp_path)
    assert _hidden_diff(hf_model, qkv.from_hf(tmp_path), batch) < TOL


def test_sentence_transformers_subfolder(tmp_path, batch):
    """Older ones keep the transformer in the sub-folder that modules.json names."""
    hf_model = _bert("BertModel")
    hf_model.save_pretrained(tmp_path / "0_Transformer")
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]))
    assert _hidden_diff(hf_model, qkv.from_hf(tmp_path), batch) < TOL


def test_bert_tensorflow_era_norm_names(tmp_path, batch):
    """The original BERT checkpoints call LayerNorm parameters gamma / beta."""
    from safetensors.torch import load_file, save_file
    hf_model = _bert("BertModel")
    hf_model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in state.items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    assert _hidden_diff(hf_model, qkv.from_hf(tmp_path), batch) < TOL


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertModel", "BertForSequenceClassification"])
def test_bert_to_hf_round_trip(tmp_path, batch, cls_name):
    ids, mask, types = batch
    hf_model = _bert(cls_name)
    hf_model.save_pretrained(tmp_path / "in")
    ours = qkv.from_hf(tmp_path / "in")
    qkv.to_hf(ours, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [cls_name]
    back = getattr(transformers, cls_name).from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = back(input_ids=ids, attention_mask=mask, token_type_ids=types)
    for name in ("logits", "last_hidden_state"):
        if name in ref:
            assert (ref[name] - got[name]).abs().max().item() < TOL


def test_bert_preset_exports_as_masked_lm(tmp_path):
    """A model trained in qkv (not loaded from transformers) exports too."""
    model = qkv.build(qkv.preset("bert-tiny", extra={"hf_model_type": "bert"})).eval()
    qkv.to_hf(model, tmp_path)
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert (back(input_ids=ids).logits - model.mlm_logits(model(ids))).abs().max().item() < TOL


def test_vit_image_classification_logits(tmp_path):
    hf_model = _vit()
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (hf_model(pixel_values=x).logits - ours(x)).abs().max().item() < TOL


def test_vit_model_hidden_states(tmp_path):
    hf_model = _vit("ViTModel", qkv_bias=False)
    hf_model.save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert ours.config.num_labels == 0 and not ours.config.bias
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = hf_model(pixel_values=x).last_hidden_state
        assert (ref - ours.hidden_states(x)).abs().max().item() < TOL
        assert (ref[:, 0] - ours(x)).abs().max().item() < TOL  # no head: forward gives the class token feature


def test_vit_to_hf_round_trip(tmp_path):
    hf_model = _vit()
    hf_model.save_pretrained(tmp_path / "in")
    qkv.to_hf(qkv.from_hf(tmp_path / "in"), tmp_path / "out")
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (back(pixel_values=x).logits - hf_model(pixel_values=x).logits).abs().max().item() < TOL


# -- errors ----------------------------------------------------------------------------------------------------------

def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        qkv.from_hf(tmp_path)


def test_folder_without_weights(tmp_path):
    _bert("BertModel").config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        qkv.from_hf(tmp_path)


def test_unsupported_model_type_lists_supported(tmp_path):
    _bert("BertModel").save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "reformer", "architectures": ["ReformerModel"]}))
    with pytest.raises(ValueError, match="reformer") as info:
        qkv.from_hf(tmp_path)
    for supported in ("bert", "vit", "gpt2", "llama"):
        assert supported in str(info.value)
    for weights in tmp_path.glob("*.safetensors"):  # decided from config.json alone, before any weight is read
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="reformer"):
        qkv.from_hf(tmp_path)


def test_missing_key_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    _bert("BertModel").save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["encoder.layer.1.attention.self.key.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        qkv.from_hf(tmp_path)


def test_masked_lm_folder_without_head_weights_names_them(tmp_path):
    """config says BertForMaskedLM but the head is gone: the error names the first missing head weight."""
    _bert("BertModel").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ValueError, match="cls.predictions"):
        qkv.from_hf(tmp_path)


def test_unsupported_bert_variant(tmp_path):
    _bert("BertModel", position_embedding_type="relative_key").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="position_embedding_type"):
        qkv.from_hf(tmp_path)


def test_base_bert_with_num_labels_keeps_its_pooler_and_matches_transformers_in_float64(tmp_path, batch):
    """``from_hf(base_folder, num_labels=N)`` = ``BertForSequenceClassification.from_pretrained(base_folder,
    num_labels=N)``: the body and the pooler come from the folder; only the classifier is new (copied across here
    so the logits can be compared), in float64."""
    ids, mask, types = batch
    _bert("BertModel").save_pretrained(tmp_path)
    ours = qkv.from_hf(tmp_path, num_labels=3, dtype=torch.float64)
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3).double().eval()
    assert torch.equal(ours.cls.pooler.weight, ref.bert.pooler.dense.weight)  # the folder's pooler, not a fresh one
    with torch.no_grad():
        ours.cls.classifier.weight.copy_(ref.classifier.weight)
        ours.cls.classifier.bias.copy_(ref.classifier.bias)
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours.classify(ours(ids, mask, token_type_ids=types))
    assert got.shape == (3, 3) and (want - got).abs().max().item() < 1e-10


def test_num_labels_on_a_classifier_of_another_size_is_refused(tmp_path):
    _bert("BertForSequenceClassification", num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=2.*3 classes"):
        qkv.from_hf(tmp_path, num_labels=2)
