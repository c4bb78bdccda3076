"""RWKV-LM checkpoints: random RWKV-4, 5.2, 6 and 7 .pth files in the release format load through qkv.from_rwkv and
give the logits of the `rwkv` pip package (BlinkDL's own inference code), token by token and over a whole sequence."""
import importlib.util
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


def test_unsupported_versions_and_foreign_files_are_refused(tmp_path):
    sd = _checkpoint(tmp_path / "m.pth")
    with pytest.raises(ValueError, match="RWKV-5.0 / 5.1"):
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


# -- RWKV-5.2, 6, 7 ------------------------------------------------------------------------------------------------

H, N, FF, R = 2, 16, 112, 8  # heads of 16 channels over C = 32; FFN 3.5 C; low ranks of 8


def _later_checkpoint(path, version, *, seed=0):
    """A random RWKV-5.2 / 6 / 7 state dict with RWKV-LM's keys and shapes (per-channel vectors as (1, 1, C))."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.3: torch.randn(*shape, generator=g) * s  # noqa: E731
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    A = H * N
    sd = {"emb.weight": r(V, C, s=1.0), "blocks.0.ln0.weight": 1 + r(C, s=0.1), "blocks.0.ln0.bias": r(C, s=0.1),
          "ln_out.weight": 1 + r(C, s=0.1), "ln_out.bias": r(C, s=0.1), "head.weight": r(V, C)}
    for i in range(L):
        b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        sd.update({b + "ln1.weight": 1 + r(C, s=0.1), b + "ln1.bias": r(C, s=0.1),
                   b + "ln2.weight": 1 + r(C, s=0.1), b + "ln2.bias": r(C, s=0.1),
                   att + "receptance.weight": r(A, C), att + "key.weight": r(A, C), att + "value.weight": r(A, C),
                   att + "output.weight": r(C, A), att + "ln_x.weight": 1 + r(A, s=0.2), att + "ln_x.bias": r(A, s=0.2),
                   ffn + "key.weight": r(FF, C), ffn + "value.weight": r(C, FF)})
        if version == 5.2:
            sd.update({att + f"time_mix_{x}": u(1, 1, C) for x in "kvrg"})
            sd.update({att + "time_decay": -3 + 4 * u(H, N), att + "time_faaaa": r(H, N, s=0.5),
                       att + "gate.weight": r(A, C), ffn + "time_mix_k": u(1, 1, C), ffn + "time_mix_r": u(1, 1, C),
                       ffn + "receptance.weight": r(C, C)})
        elif version == 6:
            sd.update({att + f"time_maa_{x}": u(1, 1, C) for x in "xwkvrg"})
            sd.update({att + "time_maa_w1": r(C, 5 * R), att + "time_maa_w2": r(5, R, C),
                       att + "time_decay": -3 + 4 * u(1, 1, A), att + "time_decay_w1": r(C, 2 * R),
                       att + "time_decay_w2": r(2 * R, A), att + "time_faaaa": r(H, N, s=0.5),
                       att + "gate.weight": r(A, C), ffn + "time_maa_k": u(1, 1, C), ffn + "time_maa_r": u(1, 1, C),
                       ffn + "receptance.weight": r(C, C)})
        else:  # 7: every block stores v0 / v1 / v2, as RWKV-LM saves them; block 0's are never used
            sd.update({att + f"x_{x}": u(1, 1, C) for x in "rwkvag"})
            for name, rank in (("w", R), ("a", R), ("v", R // 2), ("g", 2 * R)):
                sd.update({att + f"{name}1": r(C, rank), att + f"{name}2": r(rank, C)})
                if name != "g":
                    sd[att + f"{name}0"] = r(1, 1, C, s=1.0)
            sd.update({att + "k_k": 0.7 + r(1, 1, C, s=0.1), att + "k_a": 1 + r(1, 1, C, s=0.1),
                       att + "r_k": r(H, N, s=0.5), ffn + "x_k": u(1, 1, C)})
    torch.save(sd, path)
    return sd


def _rwkv_package(version):
    """The `rwkv` package's model module; RWKV-7 needs RWKV_V7_ON=1 at import, so it gets a copy of its own."""
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    module = pytest.importorskip("rwkv.model")
    if version != 7:
        return module
    spec = importlib.util.spec_from_file_location("rwkv_model_v7_for_tests", module.__file__)
    v7 = importlib.util.module_from_spec(spec)
    before = os.environ.get("RWKV_V7_ON")
    os.environ["RWKV_V7_ON"] = "1"
    try:
        spec.loader.exec_module(v7)
    finally:
        os.environ.pop("RWKV_V7_ON") if before is None else os.environ.__setitem__("RWKV_V7_ON", before)
    return v7


@pytest.mark.parametrize("version", [5.2, 6, 7])
def test_version_heads_and_ranks_are_read_from_keys_and_shapes(tmp_path, version):
    cfg = rwkv_config(_later_checkpoint(tmp_path / "m.pth", version))
    assert (cfg.mixer, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.n_layers) == (
        {5.2: "rwkv5", 6: "rwkv6", 7: "rwkv7"}[version], H, N, FF, L)
    assert cfg.extra["rwkv_version"] == version
    if version == 6:
        assert cfg.rwkv_ranks == {"mix": R, "decay": 2 * R}
    if version == 7:
        assert cfg.rwkv_ranks == {"decay": R, "a": R, "v": R // 2, "gate": 2 * R}


@pytest.mark.parametrize("version", [5.2, 6, 7])
def test_later_versions_give_the_logits_of_the_rwkv_package(tmp_path, version):
    package = _rwkv_package(version)
    _later_checkpoint(tmp_path / "m.pth", version)
    theirs = package.RWKV(str(tmp_path / "m"), strategy="cpu fp32", **({} if version == 7 else {"verbose": False}))
    ours = qkv.from_rwkv(tmp_path / "m.pth")
    assert ours.config.mixer == {5.2: "rwkv5", 6: "rwkv6", 7: "rwkv7"}[version]
    tokens = [3, 17, 42, 0, 49, 8, 8, 25, 11, 30, 2, 19, 7, 40, 1, 33, 12, 44, 5, 21, 9, 36, 14, 27, 6, 48, 30, 13,
              3, 38, 22, 47, 16]  # 33: not a multiple of any block size
    with torch.no_grad():
        full_theirs, _ = theirs.forward(tokens, None, full_output=True)  # (T, V), their sequence mode
        state, steps_theirs = None, []
        for t in tokens[:9]:  # their RNN mode
            out, state = theirs.forward([t], state)
            steps_theirs.append(out)
        ids = torch.tensor([tokens])
        full_ours = ours(ids)[0]
        cache = ours.new_cache(1)
        steps_ours = torch.cat([ours(ids[:, t:t + 1], cache) for t in range(9)], 1)[0]
    torch.testing.assert_close(full_ours, full_theirs.float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(steps_ours, torch.stack(steps_theirs).float(), rtol=0, atol=1e-4)


def test_mismatched_keys_are_named(tmp_path):
    sd = _later_checkpoint(tmp_path / "m.pth", 7)
    del sd["blocks.1.att.k_a"]
    sd["blocks.2.att.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"RWKV-7 checkpoint keys do not match: missing \['blocks.1.att.k_a'\], "
                                         r"unexpected \['blocks.2.att.extra'\]"):
        qkv.from_rwkv(tmp_path / "bad.pth")
