"""Probing straight from `bertjax extract`'s store, in bounded memory.

`word_batches` reads one example at a time from an `ActivationStore` (memory-mapped shards), pools
its tokens to words (`word_features`) and yields fixed-size batches of word features [L, b, D] with
their labels; `probe_stream` trains every layer's probe on such batches with minibatch Adam (one
compiled step, vmapped over L) and early stopping on a held-out stream. Resident memory is a few
batches, whatever the corpus size: 100k words x 13 layers x 768 dims (4 GB as float32) never sit in
memory at once. The shards are memory-mapped; the pages of a shard that has been read are handed
back (`madvise(MADV_DONTNEED)`) when the stream moves on to the next shard, so they leave the
process's resident set too instead of piling up in it until the kernel reclaims them.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.probing.linear import ProbeResult
from bertjax.probing.words import word_features
from bertjax.scale.store import ActivationStore, memmap_safetensors


def _example(store: ActivationStore, i: int, names: tuple[str, ...]) -> np.ndarray:
    """Example i's token activations [L, S_i, D], the names stacked on L ([S, D] names add one)."""
    parts = []
    for name in names:
        a = store[i][name]
        parts.append(a[None] if a.ndim == 2 else a)
    return np.concatenate(parts).astype(np.float32)


def _release(store: ActivationStore, shard: str | None) -> None:
    """Drops a shard's memory-mapped pages from the resident set (they stay in the page cache;
    reading them again maps them back). A no-op where madvise is not available."""
    if shard is None or not hasattr(mmap.mmap, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    for a in memmap_safetensors(os.path.join(store.folder, shard)).values():
        mapped = getattr(a, "_mmap", None)  # np.memmap's mapping (absent for an empty tensor)
        if mapped is not None and not mapped.closed:
            mapped.madvise(mmap.MADV_DONTNEED)


def word_batches(store: ActivationStore, word_ids: Sequence, labels: Sequence, *,
                 examples: Sequence[int] | None = None, names=("embed.out", "layer.out"),
                 pool: str = "first", batch_size: int = 4096) -> Iterator[tuple]:
    """Batches of word features and labels streamed from a store.

    Args:
      store: an ActivationStore extracted with per-token names (no --reduce).
      word_ids: per example of the store, its tokenizer's `word_ids()` ([S_i], None for specials).
      labels: per example, int [W_i] its words' labels.
      examples: which examples, in this order (default all).
      names: stored names stacked on the layer axis (those the store lacks are skipped).
      pool: "first", "mean" or "last".
      batch_size: words per batch; the last batch is smaller.

    Yields:
      (features float32 [L, b, D], labels int32 [b]).
    """
    names = tuple(n for n in ([names] if isinstance(names, str) else names) if n in store.names)
    if not names:
        raise ValueError(f"the store has none of the names asked for; it has {', '.join(store.names)}")
    if len(word_ids) != len(store) or len(labels) != len(store):
        raise ValueError(f"word_ids and labels need one entry per stored example ({len(store)}), "
                         f"got {len(word_ids)} and {len(labels)}")
    xs, ys, held, shard = [], [], 0, None
    for i in range(len(store)) if examples is None else examples:
        if store.examples[i]["shard"] != shard:  # done with the previous shard (for now)
            _release(store, shard)
            shard = store.examples[i]["shard"]
        if len(word_ids[i]) != store.lengths[i]:
            raise ValueError(f"example {i}: word_ids has {len(word_ids[i])} entries, the store "
                             f"{store.lengths[i]} tokens (tokenise as extract did)")
        feats = word_features(_example(store, i, names), word_ids[i], pool)
        if feats.shape[1] != len(labels[i]):
            raise ValueError(f"example {i}: {feats.shape[1]} words but {len(labels[i])} labels")
        xs.append(feats)
        ys.append(np.asarray(labels[i], np.int32))
        held += feats.shape[1]
        while held >= batch_size:
            x, y = np.concatenate(xs, axis=1), np.concatenate(ys)
            yield x[:, :batch_size], y[:batch_size]
            xs, ys, held = [x[:, batch_size:]], [y[batch_size:]], held - batch_size
    _release(store, shard)
    if held:
        yield np.concatenate(xs, axis=1), np.concatenate(ys)


def _batch_loss(params, x, y, scale):
    logits = jnp.einsum("ND,DK->NK", x, params["W"]) + params["b"][None, :]  # [N, K]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
    return jnp.mean(ce) + scale * jnp.sum(params["W"] ** 2)


def _make_step(opt):
    @jax.jit
    def step(params, state, x, y, scale):
        def one(p, s, xl):
            loss, grad = jax.value_and_grad(_batch_loss)(p, xl, y, scale)
            updates, s = opt.update(grad, s, p)
            return optax.apply_updates(p, updates), s, loss
        return jax.vmap(one)(params, state, x)
    return step


@jax.jit
def _evaluate(params, x, y):
    logits = jnp.einsum("LND,LDK->LNK", x, params["W"]) + params["b"][:, None, :]  # [L, N, K]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                              jnp.broadcast_to(y[None, :, None], logits.shape[:2] + (1,)), axis=2)
    hits = jnp.argmax(logits, -1) == y[None, :]  # [L, N]
    return ce[..., 0].sum(1), hits.sum(1)


def _score(params, batches) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss [L], accuracy [L]) over a stream of batches."""
    loss = hits = n = 0
    for x, y in batches:
        a, b = _evaluate(params, jnp.asarray(x), jnp.asarray(y))
        loss, hits, n = loss + np.asarray(a), hits + np.asarray(b), n + len(y)
    return loss / max(n, 1), hits / max(n, 1)


def probe_stream(train: Callable[[], Iterator], dev: Callable[[], Iterator], *, k: int,
                 n_train: int, C: float = 1.0, learning_rate: float = 1e-3, epochs: int = 20,
                 patience: int = 3) -> ProbeResult:
    """Every layer's linear probe from streamed batches (minibatch Adam, vmapped over L).

    Args:
      train, dev: functions returning a fresh iterator of (x [L, b, D], y [b]) batches
        (e.g. `lambda: word_batches(store, ...)`), called once per epoch.
      k: number of classes; n_train: training items (the L2 term is |W|^2 / (2 C n_train) per
        item, scikit-learn's objective divided by n_train).
      epochs, patience: at most `epochs` passes; stop when the held-out loss has not improved for
        `patience` epochs (every layer) and keep each layer's best epoch.

    Returns:
      ProbeResult with accuracy (held-out) and train_accuracy (the best epoch's, measured after
      it), params and steps (epochs run, the same for every layer); dev is empty.
    """
    opt = optax.adam(learning_rate)
    step, scale, params, state = _make_step(opt), 0.5 / (C * n_train), None, None
    best, best_loss, since, ran = None, None, 0, 0
    for _ in range(epochs):
        for x, y in train():
            x = jnp.asarray(x)
            if params is None:
                params = {"W": jnp.zeros((x.shape[0], x.shape[2], k)), "b": jnp.zeros((x.shape[0], k))}
                state = jax.vmap(opt.init)(params)
            params, state, _ = step(params, state, x, jnp.asarray(y), scale)
        ran += 1
        loss, _ = _score(params, dev())
        if best is None:
            best, best_loss, since = params, loss, np.zeros(len(loss), np.int64)
            continue
        better = loss < best_loss  # [L]: each layer keeps its own best epoch
        best = jax.tree.map(lambda new, old, b=better: jnp.where(
            b.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), params, best)
        best_loss, since = np.where(better, loss, best_loss), np.where(better, 0, since + 1)
        if (since >= patience).all():
            break
    if best is None:
        raise ValueError("the training stream yielded no batch")
    _, acc = _score(best, dev())
    _, train_acc = _score(best, train())
    return ProbeResult(accuracy=acc, train_accuracy=train_acc, params=jax.device_get(best),
                       steps=np.full(len(acc), ran), dev=np.zeros(0, np.int64))
