"""Structural probes (Hewitt & Manning 2019, "A Structural Probe for Finding Syntax in Word
Representations"), every layer's probe trained at once.

A probe is a rank-k linear map B [k, D]. The distance probe fits squared L2 distances
|B(h_i - h_j)|^2 to the number of tree edges between words i and j (L1 loss, each sentence's sum
divided by its squared length); the depth probe fits |B h_i|^2 to word i's depth (divided by the
length). Training is Adam on minibatches of sentences (vmapped over L) with early stopping on the
held-out sentences' loss, each layer keeping its best epoch. Scores on held-out sentences as the
paper: UUAS (minimum spanning tree of the predicted distances against the gold tree, on
non-punctuation words), root accuracy (the shallowest non-punctuation word is the root), and
Spearman correlations averaged over sentence lengths 5..50 (`bertjax.probing.trees`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.probing import trees as T
from bertjax.probing.linear import split


@dataclasses.dataclass(frozen=True)
class StructuralResult:
    """What `distance_probe` / `depth_probe` return, per layer on the held-out sentences.

    Attributes:
      spearman: float [L] (distance: DSpr., depth: NSpr. of the paper).
      uuas: float [L] for the distance probe, else None.
      root_accuracy: float [L] for the depth probe, else None.
      loss: float [L] held-out loss of the kept probes; params {"B": [L, k, D]}; epochs int [L]
        each layer's best epoch; dev: int [M] held-out sentence indices.
    """

    spearman: np.ndarray
    loss: np.ndarray
    params: dict
    epochs: np.ndarray
    dev: np.ndarray
    uuas: np.ndarray | None = None
    root_accuracy: np.ndarray | None = None


def _pad(features, heads, upos):
    if len(features) != len(heads) or not len(features):
        raise ValueError(f"features and heads need one entry per sentence, got {len(features)} "
                         f"and {len(heads)}")
    feats = [np.asarray(f, np.float32) for f in features]
    L, _, D = feats[0].shape if feats[0].ndim == 3 else (None, None, None)
    lengths = np.array([len(h) for h in heads])
    for i, (f, h) in enumerate(zip(feats, heads)):
        T.check_heads(h, i)
        if f.shape != (L, len(h), D):
            raise ValueError(f"sentence {i}: features must be [L, W_i, D] = [{L}, {len(h)}, {D}] "
                             f"(one row per word of heads), got {f.shape}")
    n, M = len(feats), int(lengths.max())
    x = np.zeros((L, n, M, D), np.float32)
    mask = np.zeros((n, M), bool)
    keep = np.zeros((n, M), bool)
    for i, f in enumerate(feats):
        x[:, i, :lengths[i]] = f
        mask[i, :lengths[i]] = True
        punct = np.zeros(lengths[i], bool) if upos is None else np.asarray(upos[i]) == "PUNCT"
        keep[i, :lengths[i]] = ~punct
    return x, mask, keep, lengths


def _predict(B, x, kind: str):
    """B [k, D], x [n, M, D] -> distances [n, M, M] or depths [n, M] (squared norms)."""
    z = jnp.einsum("nMD,kD->nMk", x, B)  # [n, M, k]
    if kind == "depth":
        return jnp.sum(z * z, -1)
    diff = z[:, :, None, :] - z[:, None, :, :]  # [n, M, M, k]
    return jnp.sum(diff * diff, -1)


def _loss(B, x, gold, mask, weight, kind: str):
    """The paper's L1 loss: per sentence |pred - gold| summed over words (pairs) / length (^2)."""
    pred = _predict(B, x, kind)
    n_words = mask.sum(-1).astype(jnp.float32)  # [n]
    if kind == "depth":
        per = jnp.sum(jnp.abs(pred - gold) * mask, -1) / n_words
    else:
        pair = mask[:, :, None] & mask[:, None, :]
        per = jnp.sum(jnp.abs(pred - gold) * pair, (-1, -2)) / n_words ** 2
    return jnp.sum(per * weight) / jnp.sum(weight)


@functools.partial(jax.jit, static_argnames=("kind", "opt"))
def _step(B, state, x, gold, mask, weight, *, kind, opt):
    def one(b, s, xl):
        loss, grad = jax.value_and_grad(_loss)(b, xl, gold, mask, weight, kind)
        updates, s = opt.update(grad, s, b)
        return optax.apply_updates(b, updates), s, loss
    return jax.vmap(one)(B, state, x)


@functools.partial(jax.jit, static_argnames=("kind",))
def _layer_losses(B, x, gold, mask, *, kind):
    weight = jnp.ones(mask.shape[0], jnp.float32)
    return jax.vmap(lambda b, xl: _loss(b, xl, gold, mask, weight, kind))(B, x)


@functools.partial(jax.jit, static_argnames=("kind",))
def _predict_layers(B, x, *, kind):
    return jax.vmap(lambda b, xl: _predict(b, xl, kind))(B, x)


def _train(x, gold, mask, train, held, *, kind, rank, seed, epochs, learning_rate, batch_size,
           patience):
    L, _, _, D = x.shape
    opt = optax.adam(learning_rate)
    rng = np.random.default_rng(seed)
    B = np.broadcast_to(rng.uniform(-0.05, 0.05, (rank, D)).astype(np.float32), (L, rank, D))
    B = jnp.asarray(B)
    state = jax.vmap(opt.init)(B)
    dev = (x[:, held], gold[held], mask[held])
    best, best_loss = B, np.asarray(_layer_losses(B, *dev, kind=kind))
    best_epoch, since = np.zeros(L, np.int64), np.zeros(L, np.int64)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(train)
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            weight = np.zeros(batch_size, np.float32)
            weight[:len(rows)] = 1
            rows = np.resize(rows, batch_size)  # a fixed shape: one compiled step
            B, state, _ = _step(B, state, x[:, rows], gold[rows], mask[rows], weight, kind=kind,
                                opt=opt)
        loss = np.asarray(_layer_losses(B, *dev, kind=kind))
        better = loss < best_loss - 1e-4
        best = jnp.where(better[:, None, None], B, best)
        best_loss = np.where(better, loss, best_loss)
        best_epoch, since = np.where(better, epoch, best_epoch), np.where(better, 0, since + 1)
        if (since >= patience).all():
            break
    return best, best_loss, best_epoch


def _fit(kind, features, heads, *, rank, dev, seed, upos, epochs, learning_rate, batch_size,
         patience):
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    x, mask, keep, lengths = _pad(features, heads, upos)
    n, M = mask.shape
    if kind == "depth":
        gold = np.zeros((n, M), np.float32)
        for i, h in enumerate(heads):
            gold[i, :lengths[i]] = T.depth_of(np.asarray(h))
    else:
        gold = np.zeros((n, M, M), np.float32)
        for i, h in enumerate(heads):
            gold[i, :lengths[i], :lengths[i]] = T.distances_of(np.asarray(h))
    train, held = split(n, dev, seed)
    B, loss, best_epoch = _train(x, gold, mask, train, held, kind=kind, rank=rank, seed=seed,
                                 epochs=epochs, learning_rate=learning_rate,
                                 batch_size=min(batch_size, len(train)), patience=patience)
    pred = np.asarray(_predict_layers(B, x[:, held], kind=kind))  # [L, M_dev, M(, M)]
    scores = _score(kind, pred, gold[held], keep[held], lengths[held])
    return StructuralResult(**scores, loss=loss, params={"B": np.asarray(B)}, epochs=best_epoch,
                            dev=held)


def _score(kind, pred, gold, keep, lengths) -> dict:
    L = pred.shape[0]
    rhos, extra = np.zeros(L), np.zeros(L)
    for layer in range(L):
        values, hits, total = [], 0, 0
        for i, w in enumerate(lengths.tolist()):
            p, g, k = pred[layer, i, :w], gold[i, :w], keep[i, :w]
            if kind == "depth":
                values.append((w, float(T.spearman(p, g))))
                if k.any():
                    hits += int(np.flatnonzero(k)[np.argmin(p[k])] == np.argmin(g))
                    total += 1
            else:
                p, g = p[:, :w], g[:, :w]
                values += [(w, float(r)) for r in T.spearman(p, g)]
                c, t = T.uuas_counts(p, g, k)
                hits, total = hits + c, total + t
        rhos[layer] = T.length_averaged(values)
        extra[layer] = hits / total if total else np.nan
    return {"spearman": rhos, ("root_accuracy" if kind == "depth" else "uuas"): extra}


_DOC_ARGS = """
    Args:
      features: one float [L, W_i, D] array per sentence (e.g. `sentence_features`).
      heads: one int [W_i] array per sentence, 1-based with 0 the root (`read_conllu`).
      rank: k, the probe's rank.
      dev: fraction of the sentences held out (drawn with `seed`), or their indices.
      seed: the split, the initialisation and the batch order.
      upos: per sentence its UPOS tags; words tagged PUNCT are left out of UUAS and root
        accuracy as the paper did (None: every word counts).
      epochs, learning_rate, batch_size, patience: Adam on minibatches of sentences; stop when no
        layer's held-out loss improved for `patience` epochs.
"""


def distance_probe(features, heads, *, rank: int = 64, dev=0.2, seed: int = 0, upos=None,
                   epochs: int = 40, learning_rate: float = 1e-3, batch_size: int = 20,
                   patience: int = 4) -> StructuralResult:
    return _fit("distance", features, heads, rank=rank, dev=dev, seed=seed, upos=upos,
                epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                patience=patience)


def depth_probe(features, heads, *, rank: int = 64, dev=0.2, seed: int = 0, upos=None,
                epochs: int = 40, learning_rate: float = 1e-3, batch_size: int = 20,
                patience: int = 4) -> StructuralResult:
    return _fit("depth", features, heads, rank=rank, dev=dev, seed=seed, upos=upos,
                epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                patience=patience)


distance_probe.__doc__ = ("""Hewitt & Manning's distance probe for every layer: squared distances
    ``||B (h_i - h_j)||^2`` fit to tree distances; returns StructuralResult with `uuas` and
    `spearman` (DSpr.) [L] on the held-out sentences.
""" + _DOC_ARGS)
depth_probe.__doc__ = ("""Hewitt & Manning's depth probe for every layer: squared norms ``||B h_i||^2``
    fit to tree depths; returns StructuralResult with `root_accuracy` and `spearman` (NSpr.) [L]
    on the held-out sentences.
""" + _DOC_ARGS)
