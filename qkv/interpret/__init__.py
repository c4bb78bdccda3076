"""Looking inside attention: rollout and flow, head importance by ablation, and the neuron view.

    weights = self_attention(model, ids)          # list over layers of (B, H, T, T)
    rollout(weights)[:, -1]                       # (B, T, T): input token j's share in token i
    attention_flow(weights)                       # (B, T, T): max-flow version (Abnar and Zuidema 2020)
    head_importance(model, loss_fn).scores        # (M, H): loss rise when one head is off
    neuron_view(model, ids, layer=0, head=1, query=3)   # one query's scores, term by term
"""
from .ablation import HeadImportance, ablate_heads, head_importance
from .figures import plot_head_importance, plot_token_matrix
from .layers import AttentionLayer, attention_layers, find_layer
from .maxflow import max_flow
from .neuron import NeuronView, Term, neuron_view, neuron_view_of
from .neuron_html import neuron_html
from .rollout import attention_flow, flow_graph, residual_matrices, rollout, self_attention

__all__ = ["HeadImportance", "ablate_heads", "head_importance", "AttentionLayer", "attention_layers", "find_layer",
           "plot_head_importance", "plot_token_matrix",
           "max_flow", "NeuronView", "Term", "neuron_view", "neuron_view_of", "neuron_html", "attention_flow", "flow_graph", "residual_matrices", "rollout", "self_attention"]
