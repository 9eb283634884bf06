"""Multi-head self-attention, per head, with every intermediate available.

Axis letters: B batch, S query positions, T key positions, D hidden, N heads, H head size.
The kernels stay in the tree's [D, D] layout. Projections are plain [B, S, D] @ [D, D] matmuls whose
output is split into heads ([B, S, N, H] -> [B, N, S, H]); the output dense sees the heads merged
back to [B, S, D], and only `attn.head_out` views its kernel per head as [N, H, D]. (An einsum
straight into [B, N, S, H] made XLA CPU copy and transpose every kernel on each call.)

Two ways to the context: the explicit one (scores, softmax, probs @ v, every step tappable), and a
fast one when neither scores nor probs are captured or patched and there is no dropout or head
mask (ModernBERT's sliding layers: banded, or cuDNN with the window, see `window_implementation`):
`jax.nn.dot_product_attention` off CPU (cuDNN's fused kernel on GPU for bfloat16 / float16,
see `fused_implementation`, falling back to JAX's choice where it is refused; XLA's otherwise); on
one CPU device the same
arithmetic as the explicit way, run over groups of the batch whose float32 scores fit in a few
MiB of cache (bert-base at (8, 512): 2x faster than scoring the whole batch at once, which spills
the 100 MB of scores out of the caches; dot_product_attention on CPU is the explicit arithmetic plus
transposes, and slower).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.banded import banded_context, fused_window_context, window_bias
from bertjax.model.checks import check_hidden
from bertjax.model.config import BertConfig
from bertjax.model.nn import dense, dropout, last_axis
from bertjax.model.params import check_tree
from bertjax.model.positions import relative_terms, rotate

# Added to the scores of padded keys. transformers uses the dtype's most negative finite value;
# we do the same (in float32, where the scores live) so that captured scores match it exactly and a
# fully padded row softmaxes to a uniform row instead of NaN.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)

# One sequence whose float32 scores exceed this is scored by query chunks (long context only:
# bert-base's (1, 512) scores, 12 MiB, stay whole as before).
LONG_BYTES = 256 * 2**20

# Scores of one batch group on the CPU fast path stay under this many bytes (measured on a 32 MiB
# L3: 1.5-3 MiB groups ran best at S = 128 and 512; whole-batch scores of 25-100 MB, 1.4-2x slower).
GROUP_BYTES = 4 * 2**20
# A sliding layer takes the banded form from S > BANDED_FROM * w (w: the window's half-width): below
# it the full form with the window in its bias is faster on CPU (ModernBERT-base shapes, 22 layers
# at (8, 512), w = 64: 6.86 s banded against 6.34 s full on a 2-core Zen 4), and at S = 8192 the
# banded form is what fits.
BANDED_FROM = 8


def mask_bias(attention_mask: ArrayLike | None) -> Float[Array, "B 1 1 T"] | None:
    """0/1 mask [B, T] -> additive float32 bias [B, 1, 1, T] (0 for tokens, MASK_VALUE for padding)."""
    if attention_mask is None:
        return None
    bias = jnp.where(jnp.asarray(attention_mask) != 0, 0.0, MASK_VALUE).astype(jnp.float32)
    return bias[:, None, None, :]  # [B, 1, 1, T]


def _project(params: dict, x: jax.Array, config: BertConfig) -> jax.Array:
    """One of query/key/value: [B, S, D] -> [B, N, S, H]."""
    B, S, _ = x.shape
    heads = dense(params, x).reshape(B, S, config.num_attention_heads, config.head_size)
    return jnp.swapaxes(heads, 1, 2)  # [B, N, S, H]


def fused_implementation(dtype, backend: str | None = None) -> str | None:
    """The `implementation` asked of `jax.nn.dot_product_attention` on the fast path: "cudnn" on
    GPU for bfloat16 / float16 (the fused kernel needs one of them, with a boolean mask), None
    (JAX's choice: XLA) otherwise. `backend` defaults to `jax.default_backend()`."""
    backend = backend or jax.default_backend()
    return "cudnn" if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else None


def window_implementation(dtype, backend: str | None = None) -> str:
    """How a ModernBERT sliding layer attends when nothing needs its probabilities: "cudnn" where
    `fused_implementation` picks cuDNN (GPU, bfloat16 / float16): `jax.nn.dot_product_attention`'s
    fused kernel with the window (`bertjax.model.banded.fused_window_context`, two one-sided
    windows merged); "banded" otherwise (`banded_context`, S x window scores, on CPU and for
    float32). `backend` defaults to `jax.default_backend()`."""
    return "cudnn" if fused_implementation(dtype, backend) == "cudnn" else "banded"


def _fused_here() -> bool:
    """Whether to take `jax.nn.dot_product_attention` when nothing forbids it: not on CPU."""
    return jax.default_backend() != "cpu"


def _group_size(B: int, N: int, S: int, T: int) -> int:
    """The largest divisor of B whose float32 scores [G, N, S, T] fit in GROUP_BYTES (at least 1);
    B itself (no grouping) over several devices, where the batch may be sharded."""
    if jax.device_count() > 1:
        return B
    fits = [g for g in range(1, B + 1) if B % g == 0 and g * N * S * T * 4 <= GROUP_BYTES]
    return max(fits, default=1)


def _query_chunk(N: int, S: int, T: int) -> int:
    """Query rows per chunk for one sequence whose scores exceed LONG_BYTES: the largest divisor
    c of S, at least 64, whose float32 scores [N, c, T] fit in GROUP_BYTES (or in 64 rows' worth
    when even 64 rows do not); S when they fit whole or no such divisor exists. ModernBERT's
    global layers at S = 8192: 3 GiB of scores at once, 24 MiB per chunk of 64 rows."""
    if N * S * T * 4 <= LONG_BYTES:
        return S
    budget = max(GROUP_BYTES, N * 64 * T * 4)
    fits = [c for c in range(64, S) if S % c == 0 and N * c * T * 4 <= budget]
    return max(fits, default=S)


def attention(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
              attention_mask: ArrayLike | None = None, capture=(), rng: jax.Array | None = None,
              head_mask: Float[ArrayLike, "N"] | None = None,
              patch: dict | None = None,
              extra: Float[ArrayLike, "N S T"] | None = None,
              positions: dict | None = None) -> tuple[Float[Array, "B S D"], dict]:
    """Self-attention of one layer, through the output dense (before residual and LayerNorm).

    Args:
      params: one layer's `attention` subtree (`self/{query,key,value}` or ModernBERT's fused
        `self/qkv`, `output/dense`).
      hidden: float [B, S, D], the layer input.
      attention_mask: [B, S] with 1 for tokens and 0 for padding, or None.
      capture: names among attn.q, attn.k, attn.v, attn.scores, attn.probs, attn.context,
        attn.head_out, attn.out, and the family's attn.q_rot / attn.k_rot (ModernBERT),
        attn.c2c / attn.c2p / attn.p2c (DeBERTa).
      rng: PRNG key for dropout on the probabilities; None for inference.
      head_mask: float [N] multiplying each head's probabilities (after dropout), or None.
      patch: name -> (new, mask) replacing attn.* activations (see `bertjax.model.capture.Taps`).
      extra: float [N, S, T], a score term added to q.k / sqrt(H) before the padding mask on
        every path (MPNet's relative bias, `attn.rel_bias`), or None.
      positions: the family's position inputs (`bertjax.model.encoder` makes them), or None:
        "rope": (cos, sin) float32 [S, H] or [B, S, H] rotating q and k (ModernBERT);
        "local": a bool scalar, True in a sliding-window layer (ModernBERT; window
        config.sliding_window); "rel": (relative embeddings [R, D], index int32 [S, T]) for
        DeBERTa's c2p / p2c terms.

    Returns:
      attn.out, float [B, S, D], and the captured activations (one layer's shapes).
    """
    taps = C.taps_for(capture, patch)
    positions = positions or {}
    check_tree(params, config, "encoder/layer/0/attention", uses=("self", "output/dense"))
    check_hidden(hidden, config)
    hidden = jnp.asarray(hidden)
    q, k, v = (taps(name, x) for name, x in zip((C.ATTN_Q, C.ATTN_K, C.ATTN_V),
                                                 _qkv(params["self"], hidden, config)))
    if "rope" in positions:  # [B, N, S, H], rotated in float32
        q = taps(C.ATTN_Q_ROT, rotate(q, *positions["rope"]))
        k = taps(C.ATTN_K_ROT, rotate(k, *positions["rope"]))
    extra = None if extra is None else jnp.asarray(extra, jnp.float32)[None]  # [1, N, S, T]
    if "rel" in positions:  # DeBERTa: scores = c2c + (c2p + p2c)
        terms = relative_terms(params["self"], q, k, *positions["rel"], config)
        names = {"c2p": C.ATTN_C2P, "p2c": C.ATTN_P2C}
        terms = [taps(names[t], x) for t, x in terms.items()]
        extra = functools.reduce(jnp.add, terms) if terms else None  # [B, N, S, T]
    local = positions.get("local")  # None, a Python bool, or a traced bool (scanned layers)
    active = rng is not None and config.attention_probs_dropout_prob > 0.0
    explicit = taps.wants(C.ATTN_SCORES) or taps.wants(C.ATTN_PROBS) or active \
        or taps.wants(C.ATTN_C2C)
    if explicit or head_mask is not None:
        bias = _bias(attention_mask, config, q.shape[2], local)
        context = _context(q, k, v, bias, config, taps, rng, head_mask, extra)
    elif local is not None:  # ModernBERT: banded in sliding layers, full in global ones
        context = _local_or_global(q, k, v, attention_mask, config, local)
    elif _fused_here():
        context = _fused_context(q, k, v, _bias(attention_mask, config, q.shape[2], None),
                                 attention_mask, extra)
    else:
        context = _grouped_context(q, k, v, _bias(attention_mask, config, q.shape[2], None),
                                   config, extra)
    context = taps(C.ATTN_CONTEXT, context)  # [B, N, S, H]
    return _output(params["output"]["dense"], context, config, taps), taps.acts


def _local_or_global(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask,
                     config: BertConfig, local) -> jax.Array:
    """ModernBERT's context without captured probabilities: in a sliding layer the banded
    attention (`bertjax.model.banded`; the full form with the window in its bias up to
    S = BANDED_FROM * w), or cuDNN's fused kernel with the window where
    `window_implementation` picks it (falling back to banded where cuDNN refuses at trace time);
    in a global one BERT's fast path (grouped on CPU, `jax.nn.dot_product_attention` elsewhere).
    Chosen at trace time when every layer is of one kind, else by `lax.cond` on the scanned
    flag. [B, N, S, H]."""
    w, scale = config.sliding_window, config.score_scale

    def sliding():
        if window_implementation(q.dtype) == "cudnn":
            try:
                return fused_window_context(q, k, v, attention_mask, w, scale, "cudnn")
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # cuDNN not available or the shape not supported: the banded form
        B, _, S, _ = q.shape
        if S <= BANDED_FROM * w:  # short: the full form with the window in the bias is faster
            return _grouped_context(q, k, v, window_bias(attention_mask, B, S, w), config)
        return banded_context(q, k, v, attention_mask, w, scale)

    def full():
        if _fused_here():
            return _fused_context(q, k, v, mask_bias(attention_mask), attention_mask)
        return _grouped_context(q, k, v, mask_bias(attention_mask), config)

    if isinstance(local, bool):
        return sliding() if local else full()
    return jax.lax.cond(local, sliding, full)


def _qkv(params: dict, hidden: jax.Array, config: BertConfig) -> tuple[jax.Array, ...]:
    """Queries, keys, values [B, N, S, H]: three projections, or ModernBERT's one fused `qkv`
    dense [D, 3D] (q, k, v in that order)."""
    if "qkv" not in params:
        return tuple(_project(params[name], hidden, config) for name in ("query", "key", "value"))
    B, S, _ = hidden.shape
    fused = dense(params["qkv"], hidden).reshape(B, S, 3, config.num_attention_heads,
                                                 config.head_size)  # [B, S, 3, N, H]
    return tuple(jnp.swapaxes(fused[:, :, i], 1, 2) for i in range(3))  # [B, N, S, H] each


def _bias(attention_mask: ArrayLike | None, config: BertConfig, S: int,
          local: jax.Array | bool | None) -> jax.Array | None:
    """The additive mask of the full-form scores: [B, 1, 1, T] for padded keys (BERT); DeBERTa's
    [B, 1, S, T] masking padded queries too (one MASK_VALUE per pair, so that a padded query's row
    is uniform, as transformers' masked_fill); in a ModernBERT layer, the sliding window's
    [B, 1, S, T] where `local` is True."""
    if local is not None:
        B = 1 if attention_mask is None else jnp.shape(attention_mask)[0]
        pad = mask_bias(attention_mask)
        pad = jnp.zeros((B, 1, 1, S), jnp.float32) if pad is None else pad
        return jnp.where(local, window_bias(attention_mask, B, S, config.sliding_window), pad)
    if not config.masks_queries or attention_mask is None:
        return mask_bias(attention_mask)
    m = jnp.asarray(attention_mask) != 0  # [B, S]
    both = m[:, :, None] & m[:, None, :]  # [B, S, T]
    return jnp.where(both, 0.0, MASK_VALUE).astype(jnp.float32)[:, None]  # [B, 1, S, T]


def _context(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
             config: BertConfig, taps: C.Taps, rng: jax.Array | None,
             head_mask: ArrayLike | None, extra: jax.Array | None = None) -> jax.Array:
    """probs @ v step by step, through the attn.scores and attn.probs taps: [B, N, S, H]."""
    scores = taps(C.ATTN_SCORES, _scores(q, k, bias, config, extra, taps))  # [B, N, S, T], f32
    probs = taps(C.ATTN_PROBS, jax.nn.softmax(scores, axis=-1).astype(q.dtype))  # [B, N, S, T]
    weights = dropout(rng, probs, config.attention_probs_dropout_prob)
    if head_mask is not None:
        weights = weights * jnp.asarray(head_mask, weights.dtype).reshape(1, -1, 1, 1)
    return jnp.einsum("BNST,BNTH->BNSH", weights, v)  # [B, N, S, H]


def _scores(q: jax.Array, k: jax.Array, bias: jax.Array | None, config: BertConfig,
            extra: jax.Array | None = None, taps: C.Taps | None = None) -> jax.Array:
    """q.k / scale (sqrt(H); DeBERTa's `config.score_scale`), tapped as attn.c2c in DeBERTa,
    plus the extra score term [1 or B, N, S, T] when given, plus the padding bias, in float32:
    [B, N, S, T]."""
    scores = jnp.einsum("BNSH,BNTH->BNST", q, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / config.score_scale)
    if taps is not None and config.model_type == "deberta-v2":
        scores = taps(C.ATTN_C2C, scores)
    if extra is not None:
        scores = scores + extra
    return scores if bias is None else scores + bias


def _grouped_context(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                     config: BertConfig, extra: jax.Array | None = None) -> jax.Array:
    """`_context`'s arithmetic (nothing tapped) over batch groups of `_group_size`: [B, N, S, H]."""
    B, N, S, _ = q.shape
    G = _group_size(B, N, S, k.shape[2])
    shared = extra if extra is not None and extra.shape[0] != B else None  # [1, N, S, T]
    own = extra if extra is not None and shared is None else None  # DeBERTa's [B, N, S, T]

    def context(q, k, v, bias, own):
        scores = _scores(q, k, bias, config, shared if own is None else own)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        return jnp.einsum("BNST,BNTH->BNSH", probs, v)

    if G == B:
        rows = _query_chunk(N, S, k.shape[2])
        if B == 1 and rows < S and own is None and shared is None and (
                bias is None or bias.shape[2] == 1):  # one long sequence: by query chunks
            chunks = q.reshape(B, N, S // rows, rows, -1).swapaxes(0, 2)  # [S/c, N, B, c, H]
            out = jax.lax.map(lambda x: context(x.swapaxes(0, 1), k, v, bias, None), chunks)
            return out.swapaxes(0, 2).reshape(q.shape)  # [B, N, S, H]
        return context(q, k, v, bias, own)
    groups = lambda x: None if x is None else x.reshape(B // G, G, *x.shape[1:])  # [B/G, G, ...]
    out = jax.lax.map(lambda xs: context(*xs),
                      (groups(q), groups(k), groups(v), groups(bias), groups(own)))
    return out.reshape(q.shape)  # [B, N, S, H]


def _fused_context(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                   attention_mask: ArrayLike | None = None,
                   extra: jax.Array | None = None) -> jax.Array:
    """The same context through `jax.nn.dot_product_attention`, when neither scores nor probs are
    captured or patched and there is no dropout or head mask, off CPU.

    In bfloat16 / float16 on GPU, cuDNN's fused kernel with a boolean mask [B, 1, 1, T] (the
    float32 bias would overflow to -inf there); where cuDNN refuses at trace time (not detected,
    an unsupported shape) it falls back to the path below. Untested on a GPU here; a fully padded
    row is only guaranteed uniform on the path below.

    Otherwise the same float32 arithmetic as `_context`: scaled scores plus the same additive bias,
    float32 softmax, so a fully padded row is uniform here too. An extra score term [1, N, S, T]
    (MPNet's relative bias) joins the additive bias, never the boolean-mask kernel.
    [B, N, S, H] in, [B, N, S, H] out.
    """
    to_bsnh = lambda x: jnp.swapaxes(x, 1, 2)  # [B, N, S, H] <-> [B, S, N, H]
    if extra is not None:
        bias = extra if bias is None else extra + bias  # [B or 1, N, S, T]
    elif fused_implementation(q.dtype) == "cudnn":
        mask = None if attention_mask is None else \
            (jnp.asarray(attention_mask) != 0)[:, None, None, :]  # [B, 1, 1, T]
        try:
            context = jax.nn.dot_product_attention(to_bsnh(q), to_bsnh(k), to_bsnh(v), mask=mask,
                                                   implementation="cudnn")
            return to_bsnh(context)  # [B, N, S, H]
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # cuDNN not available or the shape not supported: JAX's own implementation
    context = jax.nn.dot_product_attention(to_bsnh(q), to_bsnh(k), to_bsnh(v), bias=bias)
    return to_bsnh(context)  # [B, N, S, H]


def _output(params: dict, context: jax.Array, config: BertConfig, taps: C.Taps) -> jax.Array:
    """Output dense over the concatenated heads: [B, N, S, H] -> [B, S, D]; per head on request."""
    B, N, S, H = context.shape
    if taps.wants(C.ATTN_HEAD_OUT):
        # The kernel broadcast over B makes (B, N) the dot's batch axes, so that XLA writes
        # [B, N, S, D] directly (with N alone as batch axis it wrote [N, B, S, D] then transposed).
        kernel = jnp.broadcast_to(params["kernel"].reshape(N, H, -1), (B, N, H, config.hidden_size))
        head_out = taps(C.ATTN_HEAD_OUT, jnp.einsum("BNSH,BNHD->BNSD", context, kernel))
        if taps.changes(C.ATTN_HEAD_OUT):  # a patched or edited head changes attn.out: sum them
            return taps(C.ATTN_OUT, jnp.sum(head_out, axis=1) + last_axis(params["bias"], 3))
    # Captured head_out or not, attn.out is the one dense over the merged heads (cheaper than
    # summing [B, N, S, D], and the same numbers as without capture).
    out = dense(params, jnp.swapaxes(context, 1, 2).reshape(B, S, N * H))  # [B, S, D]
    return taps(C.ATTN_OUT, out)
