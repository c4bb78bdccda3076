"""Rollout and flow (Abnar and Zuidema 2020) against hand computations in float64: rollout as explicit sums over
paths on a 2-layer BERT and ViT, the max-flow primitive against a brute-force minimum cut, and flow on a 2-layer
model against networkx when it is installed."""
import itertools

import numpy as np
import pytest
import torch

import qkv
from qkv.interpret import attention_flow, flow_graph, max_flow, residual_matrices, rollout, self_attention


def model(name, **kw):
    torch.manual_seed(0)
    return qkv.build(qkv.preset(name, **kw)).double().eval()


def hand_rollout(weights):
    """sum over j1 of A2[i, j1] A1[j1, j], each A = (0.5 mean_h W + 0.5 I) renormalised, written as loops."""
    mats = []
    for w in weights:
        w = w[0].tolist()  # (H, T, T) of example 0
        H, T = len(w), len(w[0])
        a = [[sum(w[h][i][j] for h in range(H)) / H * 0.5 + (0.5 if i == j else 0.0) for j in range(T)]
             for i in range(T)]
        mats.append([[x / sum(row) for x in row] for row in a])
    (a1, a2), T = mats, len(mats[0])
    return [[sum(a2[i][m] * a1[m][j] for m in range(T)) for j in range(T)] for i in range(T)]


def test_rollout_of_a_2_layer_bert_equals_the_sum_over_paths():
    m = model("bert-tiny")
    ids = torch.tensor([[3, 17, 99, 42, 8, 250, 11], [5, 6, 7, 8, 9, 10, 0]])
    mask = torch.tensor([[1] * 7, [1] * 6 + [0]])
    w = self_attention(m, ids, mask)
    assert len(w) == 2 and w[0].shape == (2, 4, 7, 7) and w[0].dtype == torch.float64
    r = rollout(w)
    assert r.shape == (2, 2, 7, 7)
    torch.testing.assert_close(r[0, -1], torch.tensor(hand_rollout(w), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(r[0, 0], residual_matrices(w)[0, 0])  # after one layer: that layer's matrix
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 2, 7, dtype=torch.float64))
    assert (r[1, -1, :6, 6] == 0).all()  # a padded key is never attended to, so no real token reaches it


def test_rollout_of_a_vit_equals_the_sum_over_paths():
    m = model("vit-tiny")
    w = self_attention(m, torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert w[0].shape == (1, 4, 17, 17)  # the class token + 16 patches
    torch.testing.assert_close(rollout(w)[0, -1], torch.tensor(hand_rollout(w), dtype=torch.float64),
                               rtol=0, atol=1e-12)


def brute_force_max_flow(cap, s, t):
    """The minimum over every s-t cut of the capacity crossing it (max-flow min-cut)."""
    n, others = len(cap), [v for v in range(len(cap)) if v not in (s, t)]
    best = float("inf")
    for bits in itertools.product([0, 1], repeat=len(others)):
        side = {s} | {v for v, b in zip(others, bits) if b}
        best = min(best, sum(cap[u][v] for u in side for v in range(n) if v not in side))
    return best


def test_max_flow_equals_the_brute_force_minimum_cut():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(3, 8))
        cap = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
        np.fill_diagonal(cap, 0)
        s, t = 0, n - 1
        assert max_flow(cap, s, t) == pytest.approx(brute_force_max_flow(cap, s, t), abs=1e-12)
    # a textbook case: two paths sharing a bottleneck edge of capacity 1
    cap = np.zeros((4, 4))
    cap[0, 1] = cap[0, 2] = 5.0
    cap[1, 3] = 1.0
    cap[2, 1] = 3.0
    cap[2, 3] = 0.5
    assert max_flow(cap, 0, 3) == pytest.approx(1.5)


def test_max_flow_refuses_bad_graphs():
    with pytest.raises(ValueError, match="square"):
        max_flow(np.zeros((2, 3)), 0, 1)
    with pytest.raises(ValueError, match="non-negative"):
        max_flow(-np.ones((2, 2)), 0, 1)
    with pytest.raises(ValueError, match="sink=5"):
        max_flow(np.ones((2, 2)), 0, 5)


def test_flow_through_one_layer_is_that_layers_weight():
    w = self_attention(model("bert-tiny", n_layers=1), torch.tensor([[3, 17, 99, 42, 8]]))
    torch.testing.assert_close(attention_flow(w)[0], residual_matrices(w)[0, 0], rtol=0, atol=1e-12)


def test_flow_of_a_2_layer_model_equals_networkx():
    nx = pytest.importorskip("networkx")
    w = self_attention(model("bert-tiny"), torch.tensor([[3, 17, 99, 42, 8, 61]]))
    flow = attention_flow(w)
    cap, T = flow_graph(residual_matrices(w)[0]), 6
    g = nx.DiGraph()
    for u, v in zip(*np.nonzero(cap)):
        g.add_edge(int(u), int(v), capacity=float(cap[u, v]))
    for i in range(T):
        for j in range(T):
            assert flow[0, i, j] == pytest.approx(nx.maximum_flow_value(g, j, 2 * T + i), abs=1e-9)
    assert (flow[0] <= 1 + 1e-12).all()  # token i's in-capacity at the last layer is one renormalised row
    torch.testing.assert_close(attention_flow(w, normalize=True).sum(-1), torch.ones(1, T, dtype=torch.float64))


def test_rollout_refuses_what_is_not_self_attention():
    with pytest.raises(ValueError, match="head_fusion"):
        rollout([torch.rand(1, 2, 3, 3)], head_fusion="median")
    with pytest.raises(ValueError, match=r"\(B, H, T, T\)"):
        rollout([torch.rand(1, 2, 3, 4)])
    with pytest.raises(ValueError, match="attention_mask"):
        self_attention(model("vit-tiny"), torch.zeros(1, 3, 32, 32), torch.ones(1, 17))
