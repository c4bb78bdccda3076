"""``qkv info --preset P`` runs for every preset: the model is built on the meta device (sizes, no weights), so this is
fast even for the 7B ones. ViT's class token and position table are parameters the model holds directly, not inside
a submodule; counting the non-embedding parameters once asked for a submodule of that name and crashed."""
import pytest
import torch
from torch import nn

import qkv
from qkv.cli import main


@pytest.mark.parametrize("name", sorted(qkv.PRESETS))
def test_info_runs_for_every_preset(name, capsys):
    assert main(["info", "--preset", name]) == 0
    out = capsys.readouterr().out
    with torch.device("meta"):
        model = qkv.build(qkv.preset(name))
    assert type(model).__name__ in out


def _count(model: nn.Module, *, exclude_embeddings: bool) -> int:
    """The parameters by owner, written apart from num_parameters: each module's own, shared ones counted once."""
    seen, total = set(), 0
    for module in model.modules():
        if exclude_embeddings and isinstance(module, nn.Embedding):
            seen.update(id(p) for p in module.parameters(recurse=False))
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


@pytest.mark.parametrize("name", ["vit-tiny", "gpt2-tiny", "bert-tiny", "t5-tiny"])
def test_parameter_counts_include_parameters_held_by_the_model_itself(name):
    with torch.device("meta"):
        model = qkv.build(qkv.preset(name))
    assert model.num_parameters() == _count(model, exclude_embeddings=False)
    assert model.num_parameters(exclude_embeddings=True) == _count(model, exclude_embeddings=True)
    if name == "vit-tiny":  # the class token is the model's own parameter, and counted
        assert any("." not in n for n, _ in model.named_parameters())
