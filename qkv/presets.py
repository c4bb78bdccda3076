"""Named model sizes: plain data, looked up by exact name. ``qkv.preset(name, **overrides)`` -> ModelConfig."""
from __future__ import annotations

from .config import ModelConfig

_GPT2 = dict(family="decoder", vocab_size=50257, max_positions=1024, position="learned", norm="layer",
             prenorm=True, activation="gelu_tanh", bias=True, tie_embeddings=True, bos_token_id=50256,
             eos_token_id=50256)
_LLAMA = dict(family="decoder", position="rope", norm="rms", norm_eps=1e-6, prenorm=True, activation="swiglu",
              bias=False, tie_embeddings=False)
_TRANSFORMER = dict(family="encoder_decoder", position="sinusoidal", norm="layer", prenorm=False,
                    activation="relu", bias=True, tie_embeddings=True, scale_embeddings=True, dropout=0.1,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
_T5 = dict(family="encoder_decoder", position="relative", norm="rms", norm_eps=1e-6, prenorm=True,
           activation="relu", bias=False, score="dot", attn_scale=1.0, tie_embeddings=True, scale_head=True,
           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_BERT = dict(family="encoder", vocab_size=30522, max_positions=512, position="learned", norm="layer",
             norm_eps=1e-12, prenorm=False, embed_norm=True, activation="gelu", bias=True, type_vocab_size=2,
             pad_token_id=0)
_RWKV = dict(family="decoder", position="none", norm="layer", norm_eps=1e-5, bias=False, tie_embeddings=False,
             vocab_size=256, d_model=64, n_layers=2, max_positions=4096)
_GATED = dict(family="decoder", position="none", norm="rms", norm_eps=1e-6, activation="swiglu", bias=False,
              tie_embeddings=False, vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=172, max_positions=4096)
# recurrent encoder-decoders (qkv/models/rnn.py): no position table (order is the recurrence), one attention head,
# the papers' untied output layers; d_model is the state size per direction
_RNN = dict(family="rnn", position="none", n_heads=1, tie_embeddings=False, max_positions=256, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
_RNNSEARCH = dict(_RNN, rnn_cell="gru", rnn_attention="bahdanau", rnn_bidirectional="encoder", score="additive")
_LUONG = dict(_RNN, rnn_cell="lstm")  # input feeding: on by default with Luong's attention
_VIT = dict(family="vit", position="learned", norm="layer", norm_eps=1e-12, prenorm=True, activation="gelu",
            bias=True, image_size=224, patch_size=16, num_labels=1000)

# Show, Attend and Tell at laptop size (Xu et al. 2015): a 48 x 48 RGB image, a CNN down to 12 x 12 cells that each
# see about one object (15 pixels), one LSTM; max_positions counts the image's 3 * 48 * 48 bytes, the source
# qkv.generate reads. No doubly stochastic penalty: on these scenes it spreads the attention over the empty canvas
# (docs/benchmarks.md); attn_doubly_stochastic=1.0 turns it on.
_SAT = dict(family="caption", caption_decoder="lstm", image_encoder="cnn", image_size=48, patch_size=4,
            num_channels=3, d_model=64, n_layers=2, n_decoder_layers=1, n_heads=1, vocab_size=64,
            max_positions=6912, position="none", tie_embeddings=False, attn_doubly_stochastic=0.0,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)

PRESETS: dict[str, dict] = {
    # decoder-only
    "gpt2": dict(_GPT2, d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(_GPT2, d_model=1024, n_layers=24, n_heads=16),
    "gpt2-large": dict(_GPT2, d_model=1280, n_layers=36, n_heads=20),
    "gpt2-tiny": dict(_GPT2, vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_positions=128),
    # nanoGPT's CPU-sized Shakespeare run: characters, 4 layers, 4 heads, 128 wide, block 64, and nanoGPT's model:
    # no biases (LayerNorm's included), exact (erf) GELU, tied embeddings
    "gpt-char-tiny": dict(_GPT2, vocab_size=65, d_model=128, n_layers=4, n_heads=4, max_positions=64,
                          bias=False, norm_bias=False, activation="gelu", bos_token_id=None, eos_token_id=None),
    "llama-tiny": dict(_LLAMA, vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=172,
                       max_positions=256),
    "llama-1b": dict(_LLAMA, vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                     d_ff=8192, max_positions=8192, rope_base=500000.0, tie_embeddings=True),
    "llama2-7b": dict(_LLAMA, vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                      max_positions=4096),
    # encoder-decoder
    "transformer-base": dict(_TRANSFORMER, vocab_size=37000, d_model=512, n_layers=6, n_heads=8, d_ff=2048,
                             max_positions=1024),
    "transformer-big": dict(_TRANSFORMER, vocab_size=37000, d_model=1024, n_layers=6, n_heads=16, d_ff=4096,
                            max_positions=1024, dropout=0.3),
    "transformer-tiny": dict(_TRANSFORMER, vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                             max_positions=128, dropout=0.0),
    "t5-small": dict(_T5, vocab_size=32128, d_model=512, n_layers=6, n_heads=8, head_dim=64, d_ff=2048),
    "t5-tiny": dict(_T5, vocab_size=256, d_model=64, n_layers=2, n_heads=4, head_dim=16, d_ff=128),
    # encoder-only
    "bert-base": dict(_BERT, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "bert-tiny": dict(_BERT, vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_positions=128),
    # vision
    "vit-b16": dict(_VIT, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "vit-tiny": dict(_VIT, image_size=32, patch_size=8, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                     num_labels=10),
    # encoder-decoder, continued: T5 v1.1 (gated GELU, untied unscaled head), MBART, Marian (opus-mt shapes)
    "t5-v1_1-tiny": dict(_T5, vocab_size=256, d_model=64, n_layers=2, n_heads=4, head_dim=16, d_ff=128,
                         activation="geglu_tanh", tie_embeddings=False, scale_head=False),
    "mbart-tiny": dict(family="encoder_decoder", position="learned", position_offset=2, norm="layer",
                       prenorm=True, embed_norm=True, activation="gelu", bias=True, tie_embeddings=True,
                       scale_embeddings=True, head_bias=True, vocab_size=256, d_model=64, n_layers=2,
                       n_heads=4, d_ff=128, max_positions=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                       decoder_start_token_id=2),
    "marian-tiny": dict(family="encoder_decoder", position="sinusoidal", sinusoidal_interleaved=False,
                        norm="layer", prenorm=False, activation="silu", bias=True, tie_embeddings=True,
                        scale_embeddings=True, head_bias=True, vocab_size=256, d_model=64, n_layers=2,
                        n_heads=4, d_ff=128, max_positions=128, pad_token_id=255, eos_token_id=0,
                        decoder_start_token_id=255),
    # recurrent encoder-decoders with attention. RNNsearch-50 (Bahdanau et al. 2015, sec. 4.2 and appendix A.2):
    # 30,000 words, 620-wide embeddings, a bidirectional GRU encoder and a GRU decoder of 1000 units, an alignment
    # MLP of 1000 (additive score), a maxout deep output of l = 500 (d_ff = 2l); trained on sentences of <= 50 words
    "rnnsearch-tiny": dict(_RNNSEARCH, vocab_size=256, d_model=64, rnn_embed_dim=32, d_ff=64, n_layers=1),
    "rnnsearch-50": dict(_RNNSEARCH, vocab_size=30000, d_model=1000, rnn_embed_dim=620, d_ff=1000, n_layers=1),
    # Luong et al. 2015, sec. 4.1: 4-layer LSTMs of 1000 cells, 1000-wide embeddings, 50,000 words, dropout 0.2,
    # input feeding; global attention with the dot score, and their best, local-p with the general (bilinear) score
    # and D = 10. (They also read each source reversed; qkv reads it as it comes.)
    "luong-tiny": dict(_LUONG, rnn_attention="global", score="bilinear", vocab_size=256, d_model=64, n_layers=2),
    "luong-global": dict(_LUONG, rnn_attention="global", score="dot", vocab_size=50000, d_model=1000, n_layers=4,
                         dropout=0.2),
    "luong-local-p": dict(_LUONG, rnn_attention="local_p", score="bilinear", rnn_local_window=10, vocab_size=50000,
                          d_model=1000, n_layers=4, dropout=0.2),
    # linear-time decoders (qkv/nn/mixers.py, qkv/nn/rwkv.py): a fixed-size state instead of a KV cache
    "linear-tiny": dict(family="decoder", mixer="linear", position="none", norm="layer", activation="gelu",
                        bias=False, tie_embeddings=False, vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                        max_positions=4096),
    # RetNet: retention with RoPE as its relative position, LayerNorm, a gated FFN (Sun et al. 2023, Sec. 3)
    "retnet-tiny": dict(family="decoder", mixer="retention", position="rope", norm="layer", activation="swiglu",
                        bias=False, tie_embeddings=False, vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                        d_ff=128, max_positions=4096),
    # RWKV-4: RWKV-LM's layout (ln0 on the embeddings, untied head, LayerNorm eps 1e-5, FFN 4 d_model). RWKV-4
    # has no heads: its 64 channels form 4 groups of 16 only for the attention maps.
    "rwkv4-tiny": dict(_RWKV, mixer="rwkv4", n_heads=4, d_ff=256),
    # RWKV-5.2 "Eagle": a 16 x 16 matrix state per head, FFN 3.5 d_model as released
    "rwkv5-tiny": dict(_RWKV, mixer="rwkv5", n_heads=4, d_ff=224),
    # RWKV-6 "Finch": data-dependent token shift and decay through low-rank maps (small ranks at this width)
    "rwkv6-tiny": dict(_RWKV, mixer="rwkv6", n_heads=4, d_ff=224, rwkv_ranks={"mix": 8, "decay": 16}),
    # RWKV-7 "Goose": the generalised delta rule, a value residual from the first layer, FFN 4 d_model
    "rwkv7-tiny": dict(_RWKV, mixer="rwkv7", n_heads=4, d_ff=256, rwkv_ranks={"decay": 16, "a": 16, "v": 8,
                                                                              "gate": 16}),
    # gated linear attention and the delta rule, in Llama-style blocks (RMSNorm, SwiGLU, no positions)
    "gla-tiny": dict(_GATED, mixer="gla"),
    "hgrn2-tiny": dict(_GATED, mixer="hgrn2"),  # GLA whose key is its forget gate's complement
    "deltanet-tiny": dict(_GATED, mixer="deltanet"),
    "gated-deltanet-tiny": dict(_GATED, mixer="gated_deltanet"),
    # Mamba-2 (SSD) mixers in blocks with an FFN (qkv's Block; the pure Mamba-2 stack has none); state 16 x 32 a head
    "mamba2-tiny": dict(_GATED, mixer="mamba2"),
    # Gated DeltaNet-H1 (Yang et al. 2025, Sec. 4): Gated DeltaNet blocks interleaved with sliding-window attention
    "gated-deltanet-h1-tiny": dict(_GATED, mixer="gated_deltanet", layer_pattern="EW", window=64, n_layers=4),
    # hybrid: retention blocks with softmax attention in every 2nd block (both read the same RoPE tables)
    "hybrid-tiny": dict(family="decoder", mixer="retention", layer_pattern="RA", position="rope", norm="layer",
                        activation="swiglu", bias=False, tie_embeddings=False, vocab_size=256, d_model=64,
                        n_layers=4, n_heads=4, d_ff=128, max_positions=4096),
    # Infini-attention: softmax within 64-token segments plus a compressive linear-attention memory
    # image to text (qkv/models/caption.py): soft, hard (REINFORCE, Gumbel straight-through) and local attention
    "sat-soft": dict(_SAT),
    "sat-hard-reinforce": dict(_SAT, attn_select="hard", attn_estimator="reinforce", attn_entropy=0.01,
                               attn_expectation=0.5),
    "sat-hard-gumbel": dict(_SAT, attn_select="hard", attn_estimator="gumbel"),
    "sat-local": dict(_SAT, attn_select="local", attn_estimator="gumbel", attn_local_window=3),
    "caption-transformer": dict(_SAT, caption_decoder="transformer", n_decoder_layers=2, n_heads=4, d_ff=128,
                                position="sinusoidal", tie_embeddings=True),
    "memory-tiny": dict(family="decoder", mixer="memory", position="none", norm="layer", activation="gelu",
                        bias=False, tie_embeddings=False, vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                        max_positions=4096),
}
"""Named model sizes, name -> ModelConfig fields: the papers' and checkpoints' sizes, and ``-tiny`` ones that
build and run in a moment on a CPU (tests, examples, the course).

Example:

    >>> import qkv
    >>> "gpt2-tiny" in qkv.PRESETS, qkv.PRESETS["gpt2"]["n_layers"]
    (True, 12)
    >>> sorted(n for n in qkv.PRESETS if n.startswith("rwkv"))
    ['rwkv4-tiny', 'rwkv5-tiny', 'rwkv6-tiny', 'rwkv7-tiny']
"""


def preset(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of a named preset, with fields overridden (derived fields follow the overrides).

    Example:

        >>> import qkv
        >>> cfg = qkv.preset("llama-tiny", n_layers=3)            # overrides; derived fields follow
        >>> cfg.family, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        ('decoder', 3, 4, 2, 16)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig(**{**PRESETS[name], **overrides})
