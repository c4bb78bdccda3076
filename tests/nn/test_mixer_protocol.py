"""The recurrent-mixer protocol is written once: ``MixerCall.run`` reads the state a cache holds, picks the form
(the recurrent step for one cached token, the chunk form otherwise), calls the op, writes the new state back and
commits the tokens; every recurrent mixer writes only ``mix`` (its projections and gates); and the ops dispatch over
their forms in one place (``qkv.ops.checks.run_form``). The numbers are proven elsewhere (test_mixers.py,
tests/models/test_cache_regime.py); this file proves the shape of the code and the protocol's own steps."""
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

import qkv.nn as qnn
from qkv.nn.cache import RecurrentCache
from qkv.nn.mixers import MixerCall, RecurrentMixer
from qkv.ops.checks import run_form

ROOT = Path(__file__).resolve().parents[2] / "qkv"


@dataclass
class TwoPartState:
    S: torch.Tensor
    z: torch.Tensor


def fake_op(x, *, mode, initial_state, return_state, return_weights, scale):
    """out = x * scale + (the state's sum); the new state counts the tokens seen in S and sums them in z."""
    seen = 0.0 if initial_state is None else initial_state.S
    total = 0.0 if initial_state is None else initial_state.z
    state = TwoPartState(torch.as_tensor(seen + x.shape[1]), torch.as_tensor(total + x.sum()))
    fake_op.modes.append(mode)
    out = x * scale + total
    return (out, torch.ones(1), state) if return_weights else (out, state)


def test_run_reads_picks_calls_writes_and_commits():
    fake_op.modes = []
    cache = RecurrentCache()
    x = torch.arange(6.0).view(1, 3, 2)
    y, w = MixerCall(cache, None, False, None, True, tokens=3).run(fake_op, x, state_type=TwoPartState, scale=2.0)
    assert torch.equal(y, 2 * x) and w is None
    assert cache.length == 3 and float(cache["S"]) == 3 and float(cache["z"]) == 15
    y, _ = MixerCall(cache, None, False, None, True, tokens=1).run(fake_op, x[:, :1], state_type=TwoPartState,
                                                                     scale=1.0)
    assert torch.equal(y, x[:, :1] + 15)  # started from the cached state
    assert cache.length == 4 and float(cache["S"]) == 4
    y, w = MixerCall(None, None, True, None, True, tokens=3).run(fake_op, x, state_type=TwoPartState, scale=1.0)
    assert torch.equal(w, torch.ones(1))
    assert fake_op.modes == ["chunk", "recurrent", "chunk"]  # one cached token: the recurrent step


def test_every_recurrent_mixer_writes_only_mix():
    mixers = [c for c in vars(qnn).values() if isinstance(c, type) and issubclass(c, RecurrentMixer)
              and c is not RecurrentMixer]
    assert {c.__name__ for c in mixers} >= {"LinearAttention", "MultiScaleRetention", "MemoryAttention",
                                             "GatedLinearAttention", "DeltaNet", "Mamba2", "RWKVTimeMix",
                                             "RWKV5TimeMix", "RWKV6TimeMix", "RWKV7TimeMix"}
    for c in mixers:
        assert "forward" not in vars(c) and "new_cache" not in vars(c), f"{c.__name__} retypes the protocol"
        assert "mix" in vars(c)


def test_the_protocol_and_the_form_dispatch_are_written_once():
    nn_files = {p.name: p.read_text() for p in (ROOT / "nn").glob("*.py")}
    commits = {name: text.count(".commit(") for name, text in nn_files.items() if ".commit(" in text}
    # MixerCall.run, and MemoryAttention (its local attention keeps the open segment's keys, not a sum)
    assert commits == {"mixers.py": 2}, commits
    assert sum(text.count("check_mixer_call(") for text in nn_files.values()) == 2  # its definition and one call
    ops_files = {p.name: p.read_text() for p in (ROOT / "ops").glob("*.py")}
    dispatch = {name for name, text in ops_files.items() if 'mode == "recurrent"' in text}
    assert dispatch == {"checks.py"}, dispatch
    assert "mode ==" not in inspect.getsource(MixerCall.run).replace('mode = "recurrent"', "")


def test_an_op_without_a_parallel_form_of_its_own_runs_one_block():
    calls = []
    result = run_form("parallel", recurrent=lambda: calls.append("r"), chunk=lambda C: calls.append(C), tokens=7,
                      chunk_size=3)
    assert result is None and calls == [7]
    run_form("chunk", recurrent=lambda: calls.append("r"), chunk=lambda C: calls.append(C), tokens=7, chunk_size=3)
    run_form("parallel", parallel=lambda: calls.append("p"), recurrent=lambda: calls.append("r"),
             chunk=lambda C: calls.append(C), tokens=0, chunk_size=3)
    assert calls == [7, 3, "p"]
