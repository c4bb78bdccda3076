"""RWKV-LM checkpoints: a random RWKV-4 .pth in the release format loads through qkv.from_rwkv and gives the
logits of the `rwkv` pip package (BlinkDL's own inference code), token by token and over a whole sequence."""
import os

import pytest
import torch

import qkv
from qkv.hub.rwkv import rwkv_config

V, C, F, L = 50, 32, 128, 3


def _checkpoint(path, *, seed=0):
    """A random RWKV-4 state dict with RWKV-LM's keys and shapes (time_mix_* as (1, 1, C), as released)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.3: torch.randn(*shape, generator=g) * s  # noqa: E731
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    sd = {"emb.weight": r(V, C, s=1.0), "blocks.0.ln0.weight": 1 + r(C, s=0.1), "blocks.0.ln0.bias": r(C, s=0.1),
          "ln_out.weight": 1 + r(C, s=0.1), "ln_out.bias": r(C, s=0.1), "head.weight": r(V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        sd.update({b + "ln1.weight": 1 + r(C, s=0.1), b + "ln1.bias": r(C, s=0.1),
                   b + "ln2.weight": 1 + r(C, s=0.1), b + "ln2.bias": r(C, s=0.1),
                   b + "att.time_decay": -4 + 5 * u(C), b + "att.time_first": r(C, s=1.0),
                   b + "att.time_mix_k": u(1, 1, C), b + "att.time_mix_v": u(1, 1, C), b + "att.time_mix_r": u(1, 1, C),
                   b + "att.key.weight": r(C, C), b + "att.value.weight": r(C, C),
                   b + "att.receptance.weight": r(C, C), b + "att.output.weight": r(C, C),
                   b + "ffn.time_mix_k": u(1, 1, C), b + "ffn.time_mix_r": u(1, 1, C),
                   b + "ffn.key.weight": r(F, C), b + "ffn.receptance.weight": r(C, C),
                   b + "ffn.value.weight": r(C, F)})
    torch.save(sd, path)
    return sd


def test_config_is_inferred_from_shapes(tmp_path):
    sd = _checkpoint(tmp_path / "m.pth")
    cfg = rwkv_config(sd)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.mixer) == (V, C, F, L, "rwkv4")


def test_later_versions_and_foreign_files_are_refused(tmp_path):
    sd = _checkpoint(tmp_path / "m.pth")
    with pytest.raises(ValueError, match="not RWKV-4"):
        rwkv_config({**sd, "blocks.0.att.ln_x.weight": torch.ones(C)})
    torch.save({"weight": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="emb.weight"):
        qkv.from_rwkv(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError):
        qkv.from_rwkv(tmp_path / "absent")


def test_suffix_may_be_omitted_as_in_rwkv_lm(tmp_path):
    _checkpoint(tmp_path / "m.pth")
    model = qkv.from_rwkv(tmp_path / "m")
    assert model.config.n_layers == L


def test_logits_equal_the_rwkv_package(tmp_path):
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    rwkv_model = pytest.importorskip("rwkv.model")
    _checkpoint(tmp_path / "m.pth")
    theirs = rwkv_model.RWKV(str(tmp_path / "m"), strategy="cpu fp32", verbose=False)
    ours = qkv.from_rwkv(tmp_path / "m.pth")
    tokens = [3, 17, 42, 0, 49, 8, 8, 25, 11, 30, 2, 19, 7]  # 13: not a multiple of the WKV chunk (16) or 4
    with torch.no_grad():
        full_theirs, _ = theirs.forward(tokens, None, full_output=True)  # (T, V), their sequence mode
        state, steps_theirs = None, []
        for t in tokens:  # their RNN mode
            out, state = theirs.forward([t], state)
            steps_theirs.append(out)
        ids = torch.tensor([tokens])
        full_ours = ours(ids)[0]
        cache = ours.new_cache(1)
        steps_ours = torch.cat([ours(ids[:, t:t + 1], cache) for t in range(len(tokens))], 1)[0]
    torch.testing.assert_close(full_ours, full_theirs, rtol=0, atol=1e-4)
    torch.testing.assert_close(steps_ours, torch.stack(steps_theirs), rtol=0, atol=1e-4)
    torch.testing.assert_close(steps_ours, full_theirs, rtol=0, atol=1e-4)
