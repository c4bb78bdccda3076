"""Hard and local attention in MultiHeadAttention and the Transformer families (ModelConfig.attn_select): the
default stays soft with the same weights; a pick is one key forward and still trains (Gumbel straight-through, or
REINFORCE through the task's loss); cached decoding equals the full pass; the pick sits in the attention that reads
the block's context (cross-attention where a block has it)."""
import pytest
import torch

import qkv
from qkv.nn import MultiHeadAttention, Reinforce, needs_reward
from qkv.tasks.lm import CausalLMLoss


def test_soft_is_the_default_and_adds_no_weights():
    soft = MultiHeadAttention(16, 2)
    assert soft.reinforce is None and soft.selection() is None
    hard = MultiHeadAttention(16, 2, select="hard", estimator="reinforce")
    assert set(hard.state_dict()) - set(soft.state_dict()) == {"reinforce.baseline", "reinforce.started"}
    assert set(MultiHeadAttention(16, 2, select="local").state_dict()) == set(soft.state_dict())


@pytest.mark.parametrize("select", ["hard", "local"])
def test_a_gumbel_pick_is_one_key_forward_and_trains_q_and_k(select):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, select=select, estimator="gumbel", local_window=2).train()
    x = torch.randn(2, 6, 16)
    out, w = mha(x, causal=True, return_weights=True)
    if select == "hard":
        assert set(w.detach().unique().tolist()) == {0.0, 1.0}
    else:
        assert ((w.detach() > 0).sum(-1) <= 2).all()
    assert (w.detach().triu(1) == 0).all()  # never a later key
    out.square().sum().backward()
    q_rows = mha.qkv.weight.grad[:16]
    assert q_rows.abs().sum() > 0  # the straight-through estimator reaches the queries


@pytest.mark.parametrize("select", ["hard", "local"])
@pytest.mark.parametrize("name", ["gpt2-tiny", "transformer-tiny"])
def test_cached_decoding_equals_the_full_pass_with_picks(name, select):
    torch.manual_seed(0)
    model = qkv.build(qkv.preset(name, attn_select=select, attn_local_window=3)).eval()
    ids = torch.randint(3, 256, (2, 9))
    with torch.no_grad():
        if name == "gpt2-tiny":
            full = model(ids)
            cache = model.new_cache(2)
            steps = torch.cat([model(ids[:, t:t + 1], cache) for t in range(9)], 1)
        else:
            src = torch.randint(3, 256, (2, 7))
            full = model(src, ids)
            cache = model.new_cache(2)
            steps = torch.cat([model(src, ids[:, t:t + 1], cache=cache) for t in range(9)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


def test_in_an_encoder_decoder_the_cross_attention_picks_and_self_attention_stays_soft():
    model = qkv.build(qkv.preset("transformer-tiny", attn_select="hard"))
    for block in model.decoder.blocks:
        assert block.cross.select == "hard" and block.mixer.select == "soft"
    assert all(block.mixer.select == "hard" for block in model.encoder.blocks)  # no cross: its own tokens
    _, weights = model.eval()(torch.randint(3, 256, (1, 5)), torch.randint(3, 256, (1, 4)), return_weights=True)
    assert set(weights.cross[0].unique().tolist()) == {0.0, 1.0}
    assert len(weights.decoder_self[0].unique()) > 2


def test_reinforce_picks_learn_through_the_tasks_loss():
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("gpt2-tiny", attn_select="hard", attn_estimator="reinforce", attn_entropy=0.01))
    assert needs_reward(model)
    loss = CausalLMLoss(model).train()
    x = torch.randint(0, 256, (4, 12))
    s = loss((x[:, :-1], x[:, 1:]))
    s.loss.backward()
    block = model.blocks[0].mixer
    assert block.qkv.weight.grad[:block.n_heads * block.head_dim].abs().sum() > 0  # queries learn via REINFORCE
    assert all(m.pending is None and bool(m.started) for m in model.modules() if isinstance(m, Reinforce))


def test_picks_need_softmax_attention_and_reinforce_a_baseline():
    with pytest.raises(ValueError, match="attn_select='hard' picks keys of softmax attention, but mixer='linear'"):
        qkv.preset("linear-tiny", attn_select="hard")
    with pytest.raises(ValueError, match="attn_baseline_decay=None: REINFORCE"):
        qkv.preset("gpt2-tiny", attn_select="local", attn_estimator="reinforce", attn_baseline_decay=None)
    with pytest.raises(ValueError, match="baseline_decay=None: REINFORCE needs a baseline"):
        MultiHeadAttention(16, 2, select="hard", estimator="reinforce", baseline_decay=None)
    with pytest.raises(ValueError, match="select must be one of"):
        MultiHeadAttention(16, 2, select="argmax")
