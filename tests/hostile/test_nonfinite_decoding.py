"""Non-finite logits stop a decode with one line naming where they went non-finite, never an answer: a NaN weight
no longer prints the prompt with score ``nan``, weights finite but huge (``emb * 3e38``: activations overflow) no
longer decode token 0 forever with exit 0, and logits that go bad mid-run stop every kind of decode. The check
reads nothing back per token (tests/models/test_decode_host_reads.py counts the reads of a whole run)."""
import pytest
import torch

import qkv
from qkv.decoding import beam_search_trace, generate, generate_many, stream

from .conftest import refused


def _model(name="gpt2-tiny"):
    torch.manual_seed(0)
    return qkv.build(qkv.preset(name)).eval()


IDS = torch.tensor([[5, 6, 7, 8]])


@pytest.mark.parametrize("kwargs", [dict(), dict(num_beams=3), dict(do_sample=True), dict(return_scores=True),
                                    dict(prompt_lookup_num_tokens=2)], ids=str)
def test_a_nan_weight_is_named(kwargs):
    model = _model()
    with torch.no_grad():
        model.blocks[1].ffn.w_out.weight[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"not finite .*after the prompt.*'blocks\.1\.ffn\.w_out\.weight' holds 1 "
                                         r"non-finite"):
        generate(model, IDS, max_new_tokens=4, **kwargs)


@pytest.mark.parametrize("name, culprit", [("gpt2-tiny", "blocks.0.norm_mixer"), ("rwkv4-tiny", "blocks.0")])
def test_finite_weights_that_overflow_are_refused_naming_the_first_bad_output(name, culprit):
    model = _model(name)
    with torch.no_grad():
        model.embed.tokens.weight.mul_(3e38)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError) as e:
        generate(model, IDS, max_new_tokens=50)
    message = str(e.value)
    assert "not finite" in message and f"'{culprit}" in message and "largest |w|" in message, message


class _GoesBad:
    """A forward hook making the head's logits NaN once the model has read ``after`` positions."""

    def __init__(self, model, after):
        self.after, self.fed = after, 0
        model.head.register_forward_hook(self)

    def __call__(self, module, args, out):
        self.fed += args[0].shape[1]
        return out.masked_fill(torch.ones_like(out, dtype=torch.bool), float("nan")) if self.fed > self.after else out


@pytest.mark.parametrize("kwargs", [dict(), dict(eos_token_id=3), dict(num_beams=2), dict(do_sample=True),
                                    dict(prompt_lookup_num_tokens=2)], ids=str)
def test_logits_that_go_bad_mid_run_stop_the_run(kwargs):
    model = _model()
    _GoesBad(model, after=4 + 5)  # the prompt and 5 steps are fine
    with pytest.raises(ValueError, match="logits are not finite .* by generated token"):
        generate(model, IDS, max_new_tokens=60, **kwargs)


def test_stream_trace_and_batches_stop_too():
    model = _model()
    _GoesBad(model, after=4 + 2)
    with pytest.raises(ValueError, match="not finite"):
        list(stream(model, IDS, max_new_tokens=40))
    model = _model()
    _GoesBad(model, after=4 + 2)
    with pytest.raises(ValueError, match="not finite"):
        beam_search_trace(model, IDS, max_new_tokens=10, num_beams=2)
    model = _model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="not finite"):
        generate_many(model, [[5, 6], [7]], max_new_tokens=3)


def test_the_command_refuses_a_nan_model_in_one_line(world, lm_folder, capsys):
    from .conftest import copy
    folder = copy(lm_folder, world.root / "nan")
    model = qkv.load(folder)
    with torch.no_grad():
        model.embed.tokens.weight.mul_(3e38)
    model.save(folder)
    for extra in ([], ["--show-scores"], ["--num-beams", "2"]):
        refused(capsys, ["generate", "--checkpoint", folder, "--prompt", "The", "--max-new-tokens", "5", *extra],
                "not finite", "blocks.0")
