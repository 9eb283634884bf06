"""Weight-based circuits of the attention heads (Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits"): QK and OV circuits, their spectra, composition scores and the full OV circuit.

Conventions. bertjax multiplies row vectors by kernels (`x @ kernel`, kernel [in, out]), so per head:

* the **QK circuit** is W_QK = W_Q,h W_K,h^T, [D, D]: the score of query token x (a row) on key
  token y is x W_QK y^T (before the 1/sqrt(H) scale, which the circuit leaves out);
* the **OV circuit** is W_OV = W_V,h W_O,h, [D, D]: the head writes p @ (Y W_OV) into the residual
  stream, p its attention probabilities and Y the key tokens' rows;

with W_Q,h = query kernel[:, h*H:(h+1)*H] ([D, H]), likewise W_K,h and W_V,h, and W_O,h the
output dense kernel's rows h*H:(h+1)*H ([H, D]). Each circuit is a `FactoredMatrix` (left [.., M, H],
right [.., H, N]): the dense [D, D] (or [V, V]) product is only formed when `.dense()` is asked for.
Singular values and Frobenius norms come from the factors: the R of each factor's QR (from the
Cholesky factor of its [H, H] Gram matrix), then the small [H, H] product (A B = Q_A (R_A R_B^T) Q_B^T
with Q_A, Q_B orthonormal).

**Composition scores** between a head h1 of layer l1 (the writer) and a head h2 of a later layer l2
(the reader), each the Frobenius norm of the composed circuit over the product of the two norms
(1 when the two read and write the same subspace, about 1/sqrt(D) for random heads):

* Q-composition: ||W_OV^h1 W_QK^h2||_F: h1's output read by h2's queries;
* K-composition: ||W_QK^h2 W_OV^h1^T||_F: h1's output read by h2's keys;
* V-composition: ||W_OV^h1 W_OV^h2||_F: h1's output read by h2's values.

(In Elhage et al.'s column-vector notation: ||W_QK^T W_OV||, ||W_QK W_OV|| and ||W_OV W_OV||.)

**What the circuits ignore.** They are the linear, bias-free part of each head, and BERT is post-LN:

* biases. The query bias adds b_Q W_K^T y^T to every score, a per-key term that does change the
  attention; the key bias adds x W_Q b_K^T, the same for every key of a query, which the softmax
  removes. The value and output biases add a constant vector per layer (probabilities sum to 1).
* LayerNorm. Between a writer and a reader lie the add & norm LayerNorms of every layer in between
  (per-token centring, division by the token's std, then scale and bias), and the MLPs, which also
  read and write the residual stream. The scores treat the residual stream as the sum of the
  heads' writes, which BERT's post-LN only approximates (centring and the per-token 1/std are
  shared by every write to a token; the LayerNorm scales are not folded into the weights here).
* the **full OV circuit** W_E W_OV W_U ([V, V], token in to logit out) skips the embeddings'
  LayerNorm, the position and token type embeddings, every other layer and the MLM head's transform
  (dense, activation, LayerNorm): W_U is the decoder ([D, V], the transposed word embeddings when
  tied), or any [D, V] matrix you pass.

Everything is jitted with the config static and computes all layers and heads at once: batched
linear algebra over the [L, N] axes (one Cholesky and one SVD call per program: with several, a
program can hang on its second run on CPU in jax 0.10.2), `lax.map` over the writer layers of the
composition scores and over the heads of `copying_scores` (bounded memory; the fully batched
composition program hangs the same way). Axis letters: L layers, N heads, D hidden, H head size,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from bertjax.analysis.tables import check_index
from bertjax.model.config import BertConfig
from bertjax.model.encoder import stack_layers
from bertjax.model.params import check_params, check_tree


@functools.partial(jax.tree_util.register_dataclass, data_fields=["left", "right"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class FactoredMatrix:
    """A matrix kept as the product of two factors, left [..., M, K] @ right [..., K, N].

    Leading axes (e.g. [L, N] for one circuit per head) are batch axes. A pytree: it passes through
    `jax.jit` and `jax.vmap`.
    """

    left: Array
    right: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.left.shape[:-1], self.right.shape[-1])

    def dense(self) -> Array:
        """The product [..., M, N] (M x N floats per matrix: ask only when that is small)."""
        return self.left @ self.right

    def singular_values(self) -> Array:
        """The min(M, K, N) largest singular values [..., K], in decreasing order, from the factors."""
        return jnp.linalg.svd(_core(self.left, self.right), compute_uv=False)

    def norm(self) -> Array:
        """The Frobenius norm [...] of the product, from the factors."""
        return _frobenius(_core(self.left, self.right))

    def rows(self, index) -> Array:
        """Rows `index` of the product: left[..., index, :] @ right, e.g. [n, N] for n indices.
        Indices in [-M, M), negative ones from the end as in Python; others raise ValueError."""
        index = _in_range("rows", index, self.left.shape[-2])
        return jnp.take(self.left, index, axis=-2) @ self.right

    def __getitem__(self, index) -> FactoredMatrix:
        """Selects along the batch axes, e.g. `circuit[layer, head]` (negative indices from the end,
        as in Python; an index out of range raises ValueError instead of being clamped)."""
        index = index if isinstance(index, tuple) else (index,)
        batch = self.left.shape[:-2]
        if len(index) > len(batch) and Ellipsis not in index:
            raise ValueError(f"index {index} has more axes than the batch axes {batch}")
        if Ellipsis not in index:
            index = tuple(i if isinstance(i, slice) or i is None else
                          _in_range(f"circuit axis {axis} (size {batch[axis]})", i, batch[axis])
                          for axis, i in enumerate(index))
        return FactoredMatrix(self.left[index], self.right[index])


def _in_range(what: str, index, size: int):
    """An int, ints or a concrete int array in [-size, size), negative ones made non-negative;
    ValueError otherwise. Traced indices pass unchanged (their values cannot be read)."""
    if isinstance(index, jax.core.Tracer):
        return index
    values = np.asarray(index)
    if isinstance(index, (bool, np.bool_)) or values.dtype.kind not in "iu":
        raise ValueError(f"{what}: indices must be ints, got {index!r}")
    bad = values[(values < -size) | (values >= size)]
    if bad.size:
        raise ValueError(f"{what}: index {int(bad.flat[0])} is out of range [-{size}, {size})")
    if values.ndim == 0:
        return int(values) % size
    return jnp.asarray(values % size)


def _frobenius(x: Array) -> Array:
    """Frobenius norms over the last two axes. (jnp.linalg.norm(x, axis=(-2, -1)) of a 6-axis array
    hangs on its second jitted call on CPU in jax 0.10.2; this is the same sum.)"""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1)))


def _r(x: Array) -> Array:
    """An upper-triangular R [..., K, K] with x^T x = R^T R (the R of x's QR, up to row signs).

    From the Cholesky factor of the [K, K] Gram matrix: XLA's batched QR on CPU is slow (seconds
    for MiniLM's 72 heads, and for the [V, D] word embeddings), the Gram matrix is one matmul. Its
    cost: singular values carry relative errors of about eps * cond(x)^2, harmless for these
    well-conditioned weights.
    """
    return _r_of_gram(jnp.swapaxes(x, -1, -2) @ x)


def _r_of_gram(gram: Array) -> Array:
    """R [..., K, K] with gram = R^T R; a tiny relative jitter keeps an all-zero (ablated) factor
    finite."""
    K = gram.shape[-1]
    scale = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None] / K  # [..., 1, 1]
    jitter = (1e-6 * scale + 1e-30) * jnp.broadcast_to(jnp.eye(K, dtype=gram.dtype), gram.shape)
    return jnp.swapaxes(jnp.linalg.cholesky(gram + jitter), -1, -2)


def _rs(*xs: Array) -> list[Array]:
    """`_r` of each x, in one Cholesky call when the shapes agree: in jax 0.10.2 on CPU a jitted
    program with several Cholesky calls can hang on its second run."""
    if len({x.shape for x in xs}) == 1:
        return list(_r(jnp.stack(xs)))
    return [_r(x) for x in xs]


def _core(left: Array, right: Array) -> Array:
    """R_A R_B^T [..., K', K'']: the same singular values and Frobenius norm as left @ right."""
    r_left, r_right = _rs(left, jnp.swapaxes(right, -1, -2))
    return r_left @ jnp.swapaxes(r_right, -1, -2)


def check_qk_defined(config: BertConfig) -> None:
    """Raises ValueError, one line naming the reason, where a position-free QK circuit does not
    describe the model's scores."""
    if config.relative_attention_num_buckets:  # MPNet
        raise ValueError(f"QK circuits of this {config.model_type} model would leave out the "
                         f"relative position bias (attn.rel_bias) that every attention score "
                         f"adds: refused (OV circuits, which do not read scores, work)")
    if config.model_type == "deberta-v2" and config.position_terms:
        raise ValueError(f"the QK circuit W_Q W_K^T omits DeBERTa's {' and '.join(config.position_terms)} "
                         f"position terms (attn.c2p / attn.p2c): use the captured attn.c2c / "
                         f"attn.c2p / attn.p2c (bertjax.analysis.term_shares) instead")
    if config.rotary:
        raise ValueError("the QK circuit W_Q W_K^T is not position-free in ModernBERT: rotary "
                         "embeddings rotate q and k by position (use the captured attn.q_rot / "
                         "attn.k_rot, or attn.scores)")


def head_weights(params: dict, config: BertConfig) -> dict[str, Float[Array, "L N ..."]]:
    """Each head's slices of the attention kernels, stacked over layers and heads.

    Args:
      params: the full tree (per-layer or stacked), or its `encoder` subtree.

    Returns:
      {"q", "k", "v": float [L, N, D, H] (W_Q,h, W_K,h, W_V,h), "o": float [L, N, H, D] (W_O,h)}.
    """
    if "embeddings" in params:  # the checks `forward` runs: shapes against the config
        check_params(params, config)
    else:
        check_tree(params, config, "encoder")
    layers = stack_layers(params)
    layers = (layers["encoder"] if "encoder" in layers else layers)["layer"]
    N, H = config.num_attention_heads, config.head_size
    if config.layer_map is not None:  # ALBERT: each applied layer's shared weights, [L, ...]
        index = jnp.asarray(config.layer_map)
        layers = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[index], layers)
    attn = layers["attention"]
    out = {}
    for i, (name, key) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
        if "qkv" in attn["self"]:  # ModernBERT's fused [D, 3D]: q, k, v in that order
            fused = jnp.asarray(attn["self"]["qkv"]["kernel"])
            kernel = fused[..., i * N * H:(i + 1) * N * H]  # [L, D, N*H]
        else:
            kernel = jnp.asarray(attn["self"][key]["kernel"])  # [L, D, N*H]
        out[name] = kernel.reshape(*kernel.shape[:2], N, H).transpose(0, 2, 1, 3)  # [L, N, D, H]
    kernel = jnp.asarray(attn["output"]["dense"]["kernel"])  # [L, N*H, D]
    out["o"] = kernel.reshape(kernel.shape[0], N, H, kernel.shape[-1])  # [L, N, H, D]
    return out


def qk_circuit(params: dict, config: BertConfig) -> FactoredMatrix:
    """Every head's QK circuit W_Q,h W_K,h^T as factors [L, N, D, H] @ [L, N, H, D].

    Raises:
      ValueError: a family whose scores are not q.k of the content alone (MPNet adds its relative
        bias, DeBERTa its c2p / p2c position terms, ModernBERT rotates q and k by position).
    """
    check_qk_defined(config)
    w = head_weights(params, config)
    return FactoredMatrix(w["q"], jnp.swapaxes(w["k"], -1, -2))


def ov_circuit(params: dict, config: BertConfig) -> FactoredMatrix:
    """Every head's OV circuit W_V,h W_O,h as factors [L, N, D, H] @ [L, N, H, D]."""
    w = head_weights(params, config)
    return FactoredMatrix(w["v"], w["o"])


def unembedding(params: dict, config: BertConfig | None = None) -> Float[Array, "D V"]:
    """The MLM decoder [D, V]: its own kernel when untied, else the transposed word embeddings.
    Refused for a model whose decoder is E-wide (ELECTRA with E != D, ALBERT): its MLM head maps
    D -> E first, so no [D, V] matrix of the weights alone is its unembedding."""
    predictions = params.get("cls", {}).get("predictions")
    if predictions is None:
        raise ValueError("this model has no MLM head (no cls/predictions in the parameter tree): "
                         "pass unembed=, a [D, V] matrix (e.g. the word embeddings transposed)")
    if config is not None and config.embed_size != config.hidden_size:
        raise ValueError(f"this {config.model_type} model's decoder reads E={config.embed_size}-"
                         f"wide vectors (its MLM head maps D={config.hidden_size} -> E first): "
                         f"pass unembed=, a [D, V] matrix")
    if "decoder" in predictions:
        return jnp.asarray(predictions["decoder"]["kernel"])
    return jnp.asarray(params["embeddings"]["word_embeddings"]["embedding"]).T


def _unembed(params: dict, config: BertConfig, unembed, W_E: Array) -> Array:
    """The [D, V] unembedding: `unembed`, shape-checked, or the model's own (`unembedding`)."""
    W_U = unembedding(params, config) if unembed is None else jnp.asarray(unembed)
    if W_U.shape != (config.hidden_size, W_E.shape[0]):
        raise ValueError(f"unembed must have shape [D, V]={(config.hidden_size, W_E.shape[0])}, "
                         f"got {tuple(W_U.shape)}")
    return W_U


def embedding_matrix(params: dict) -> Float[Array, "V D"]:
    """W_E [V, D]: the word embeddings, through the E -> D projection (`embeddings/project`,
    ELECTRA with E != D and ALBERT; its bias left out, as the circuits leave biases out)."""
    W_E = jnp.asarray(params["embeddings"]["word_embeddings"]["embedding"])  # [V, E]
    project = params["embeddings"].get("project")
    return W_E if project is None else W_E @ jnp.asarray(project["kernel"])  # [V, D]


def full_ov_circuit(params: dict, config: BertConfig, layer: int, head: int,
                    unembed: Float[Array, "D V"] | None = None) -> FactoredMatrix:
    """One head's token-to-logit OV circuit W_E W_V,h W_O,h W_U, [V, V], as [V, H] @ [H, V].

    Args:
      layer, head: the head (negative indices count from the end).
      unembed: the [D, V] unembedding; None takes the MLM head's decoder (`unembedding`).

    Returns:
      the factored circuit: `.rows(token_ids)` gives the logits each token, attended to, adds.
    """
    W_E = embedding_matrix(params)  # [V, D]
    W_U = _unembed(params, config, unembed, W_E)
    layer = check_index("layer", layer, config.num_layers)
    head = check_index("head", head, config.num_attention_heads)
    ov = ov_circuit(params, config)[layer, head]
    return FactoredMatrix(W_E @ ov.left, ov.right @ W_U)


def full_ov_singular_values(params: dict, config: BertConfig,
                            unembed: Float[Array, "D V"] | None = None) -> Float[Array, "L N H"]:
    """The singular values of every head's full OV circuit, [L, N, H], from the factors."""
    W_E = embedding_matrix(params)  # [V, D]
    W_U = _unembed(params, config, unembed, W_E)
    return _full_ov_spectrum(ov_circuit(params, config), W_E, W_U)


@jax.jit
def _full_ov_spectrum(ov: FactoredMatrix, W_E: Array, W_U: Array) -> Array:
    # The singular values of (W_E W_V,h)(W_O,h W_U) are those of R_l R_r^T, with R_l^T R_l =
    # W_V^T (W_E^T W_E) W_V and R_r^T R_r = W_O (W_U W_U^T) W_O^T: [D, D] work, never [V, H].
    # One Cholesky call for both (see `_rs`).
    left = jnp.swapaxes(ov.left, -1, -2) @ (W_E.T @ W_E) @ ov.left  # [L, N, H, H]
    right = ov.right @ (W_U @ W_U.T) @ jnp.swapaxes(ov.right, -1, -2)  # [L, N, H, H]
    r_left, r_right = _r_of_gram(jnp.stack([left, right]))
    return jnp.linalg.svd(r_left @ jnp.swapaxes(r_right, -1, -2), compute_uv=False)  # [L, N, H]


def copying_scores(params: dict, config: BertConfig, token_ids, k: int = 5,
                   unembed: Float[Array, "D V"] | None = None) -> Float[Array, "L N"]:
    """How much each head copies: the share of `token_ids` whose own logit is among the top `k` of
    their row of the head's full OV circuit (attending to token t raises the logit of t itself).

    A top-k reading of Elhage et al.'s copying heads (they use the OV circuit's eigenvalues); with
    the caveats of the full OV circuit (module docstring). token_ids: int [n]; returns [L, N].
    """
    W_E = embedding_matrix(params)  # [V, D]
    W_U = _unembed(params, config, unembed, W_E)
    token_ids = jnp.asarray(token_ids)
    if token_ids.ndim != 1 or not jnp.issubdtype(token_ids.dtype, jnp.integer):
        raise ValueError(f"token_ids must be int [n], got {token_ids.dtype} {tuple(token_ids.shape)}")
    V = W_E.shape[0]
    if token_ids.size and not (0 <= int(jnp.min(token_ids)) and int(jnp.max(token_ids)) < V):
        bad = int(jnp.min(token_ids)) if int(jnp.min(token_ids)) < 0 else int(jnp.max(token_ids))
        raise ValueError(f"token_ids must be in [0, {V}) (the vocabulary), got {bad}")
    return _copying(ov_circuit(params, config), W_E, W_U, token_ids, k)


@functools.partial(jax.jit, static_argnames=("k",))
def _copying(ov: FactoredMatrix, W_E: Array, W_U: Array, token_ids: Array, k: int) -> Array:
    L, N = ov.left.shape[:2]
    sources = W_E[token_ids]  # [n, D]

    def one(factors):  # one head's [D, H], [H, D]
        left, right = factors
        logits = (sources @ left) @ (right @ W_U)  # [n, V]
        own = jnp.take_along_axis(logits, token_ids[:, None], axis=1)  # [n, 1]
        return jnp.mean(jnp.sum(logits > own, axis=1) < k)  # own logit's rank below k

    flat = (ov.left.reshape(L * N, *ov.left.shape[2:]), ov.right.reshape(L * N, *ov.right.shape[2:]))
    return jax.lax.map(one, flat).reshape(L, N)


@functools.partial(jax.jit, static_argnames=("config",))
def circuit_spectra(params: dict, config: BertConfig) -> dict[str, Float[Array, "L N H"]]:
    """Singular values of every head's QK and OV circuits: {"qk", "ov": float [L, N, H]}."""
    qk, ov = qk_circuit(params, config), ov_circuit(params, config)
    # both circuits in one batch: one Cholesky and one SVD call (see `_rs`)
    both = FactoredMatrix(jnp.stack([qk.left, ov.left]), jnp.stack([qk.right, ov.right]))
    spectra = both.singular_values()  # [2, L, N, H]
    return {"qk": spectra[0], "ov": spectra[1]}


@functools.partial(jax.jit, static_argnames=("config",))
def composition_scores(params: dict, config: BertConfig) -> dict[str, Float[Array, "L N L N"]]:
    """Q-, K- and V-composition scores between every pair of heads (see the module docstring).

    Returns:
      {"q", "k", "v": float [L, N, L, N]}, indexed [writer layer, writer head, reader layer, reader
      head]; 0 where the reader's layer is not after the writer's (no composition possible).
    """
    check_qk_defined(config)
    w = head_weights(params, config)
    # R factors [L, N, H, H]: W_Q, W_K (= (W_K^T)^T), W_V and W_O^T.
    rq, rk, rv, ro = _rs(w["q"], w["k"], w["v"], jnp.swapaxes(w["o"], -1, -2))
    ov_norm = _frobenius(rv @ jnp.swapaxes(ro, -1, -2))  # [L, N]
    qk_norm = _frobenius(rq @ jnp.swapaxes(rk, -1, -2))  # [L, N]

    def composed(reader_in, r_reader):
        """||R_V1 (W_O1 reader_in_2) R_2^T||_F for every writer head 1 and reader head 2: per
        writer layer one [N*H, D] @ [D, L*N*H] product, then [H, H] work per pair (never a [D, D]
        per pair)."""

        def writer_layer(factors):  # W_O, R_V of one layer: [N, H, D], [N, H, H]
            w_o, r_v = factors
            middle = jnp.einsum("nhd,bmde->nbmhe", w_o, reader_in)  # [N, L, N, H, H]
            core = jnp.einsum("nih,nbmhe,bmje->nbmij", r_v, middle, r_reader)
            return _frobenius(core)  # [N, L, N]

        # lax.map, not vmap, over the writer layers: in jax 0.10.2 on CPU the batched program
        # hangs on its second call.
        return jax.lax.map(writer_layer, (w["o"], rv))  # [L, N, L, N]

    # Q: W_V1 W_O1 W_Q2 W_K2^T; K: the transpose of W_Q2 W_K2^T W_O1^T W_V1^T, i.e.
    # W_V1 W_O1 W_K2 W_Q2^T (same norm); V: W_V1 W_O1 W_V2 W_O2.
    raw = jnp.stack([composed(w["q"], rk), composed(w["k"], rq), composed(w["v"], ro)], -1)
    L = config.num_layers
    later = (jnp.arange(L)[:, None] < jnp.arange(L)[None, :])[:, None, :, None]  # [L, 1, L, 1]
    norms = {"q": ov_norm[:, :, None, None] * qk_norm[None, None],
             "k": ov_norm[:, :, None, None] * qk_norm[None, None],
             "v": ov_norm[:, :, None, None] * ov_norm[None, None]}
    return {name: jnp.where(later, raw[..., i] / norms[name], 0.0)
            for i, name in enumerate(("q", "k", "v"))}
