"""A model's blueprint (qkv/models/sizing.py) is the model it describes, for every family and layer pattern, at any
layer count, from one build on the meta device of at most two repeats of the pattern; and a load or a build makes
that one meta build, never more (the file checks, the memory check and the build share it)."""
import pytest
import torch

import qkv
from qkv.models import FAMILIES, family_of
from qkv.models.sizing import blueprint

SMALL = dict(d_model=16, n_heads=2, d_ff=32, vocab_size=40)
CASES = {
    "tied decoder": ("gpt2-tiny", dict(n_layers=5, max_positions=32)),
    "hybrid pattern": ("gpt2-tiny", dict(n_layers=11, layer_pattern="LRAW", window=3, max_positions=32)),
    "rwkv-7 after attention": ("llama-tiny", dict(n_layers=6, layer_pattern="A7", n_kv_heads=2)),
    "rwkv-4": ("gpt2-tiny", dict(n_layers=5, mixer="rwkv4", position="none")),
    "encoder-decoder": ("transformer-tiny", dict(n_layers=5, n_decoder_layers=3, max_positions=32)),
    "t5 buckets": ("t5-tiny", dict(n_layers=5, n_decoder_layers=4, head_dim=8)),
    "bert classifier": ("bert-tiny", dict(n_layers=5, num_labels=3, max_positions=32)),
    "vit": ("vit-tiny", dict(n_layers=5, image_size=16, patch_size=8, num_labels=4)),
    "rnn, built whole": ("rnnsearch-tiny", dict(n_layers=3, n_decoder_layers=4)),  # block_paths (): no copying
    "caption, built whole": ("caption-transformer", dict(n_layers=3, n_decoder_layers=3)),
}


def _real(config):
    model = qkv.build(config)
    groups = {}
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), []).append(name)
    aliases = {n for names in groups.values() if len(names) > 1 for n in names}
    count = sum({id(t): t.numel() for t in (*model.parameters(), *model.buffers())}.values())
    return model.state_dict(), aliases, count


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_blueprint_is_the_model_it_describes(case):
    preset, fields = CASES[case]
    config = qkv.preset(preset, **{**SMALL, **fields})
    state, aliases, count = _real(config)
    bp = blueprint(config)
    assert bp.shapes() == {k: tuple(v.shape) for k, v in state.items()}
    assert bp.dtypes() == {k: v.dtype for k, v in state.items()}
    assert bp.aliases() == aliases
    assert bp.parameters == count
    if family_of(config).block_paths:
        assert any(built < wanted for _, built, wanted, _ in bp.stacks), "the case should extrapolate past the build"


def test_every_family_has_a_case_here():
    """A new family's blocks are copied past the second repeat from its ``block_paths``: add a case above."""
    assert {qkv.preset(preset).family for preset, _ in CASES.values()} == set(FAMILIES)


def test_a_million_layers_cost_no_more_to_size_than_a_few():
    config = qkv.preset("gpt2-tiny", **SMALL, n_layers=10**6)
    bp = blueprint(config)
    assert [(built, wanted) for _, built, wanted, _ in bp.stacks] == [(2, 10**6)]
    per_layer = blueprint(config.replace(n_layers=3)).parameters - blueprint(config.replace(n_layers=2)).parameters
    assert bp.parameters == blueprint(config.replace(n_layers=2)).parameters + (10**6 - 2) * per_layer
    assert "n_layers=1000000" in bp.sizes()


@pytest.fixture
def builds(monkeypatch):
    """Counts each family's model constructions, on the meta device and off it."""
    counts = {"meta": 0, "real": 0}
    for record in FAMILIES.values():
        original = record.model.__init__

        def counted(self, *args, _original=original, **kwargs):
            counts["meta" if torch.get_default_device().type == "meta" else "real"] += 1
            _original(self, *args, **kwargs)
        monkeypatch.setattr(record.model, "__init__", counted)
    return counts


def test_build_makes_one_meta_build(builds):
    qkv.build(qkv.preset("gpt2-tiny", **SMALL))
    assert builds == {"meta": 1, "real": 1}


def test_load_makes_one_meta_build(builds, tmp_path):
    qkv.build(qkv.preset("llama-tiny", **SMALL, n_layers=3)).save(tmp_path / "m")
    builds.update(meta=0, real=0)
    qkv.load(tmp_path / "m")
    assert builds == {"meta": 1, "real": 1}


def test_from_hf_makes_one_meta_build(builds, tmp_path):
    qkv.to_hf(qkv.build(qkv.preset("llama-tiny", **SMALL, n_layers=3)), tmp_path / "hf")
    builds.update(meta=0, real=0)
    qkv.from_hf(tmp_path / "hf")
    assert builds == {"meta": 1, "real": 1}


def test_build_refuses_a_plan_of_another_config():
    config = qkv.preset("gpt2-tiny", **SMALL)
    with pytest.raises(ValueError, match="plan was made for another config"):
        qkv.build(config, plan=blueprint(qkv.preset("gpt2-tiny", **SMALL)))
    assert qkv.build(config, plan=blueprint(config)).config is config
