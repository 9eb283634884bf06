"""The parameter tree: its layout, its shapes, random initialisation and validation.

Plain nested dicts of arrays, named as transformers 4.x `FlaxBertModel` names them. Dense weights
are `kernel` [in, out]; embeddings are `embedding`; LayerNorm is `scale` and `bias`.

| path                                                     | shape  |
|----------------------------------------------------------|--------|
| embeddings/word_embeddings/embedding                     | [V, D] |
| embeddings/position_embeddings/embedding                 | [P, D] |  P = max_position_embeddings
| embeddings/token_type_embeddings/embedding               | [Y, D] |  Y = type_vocab_size
| embeddings/LayerNorm/{scale,bias}                        | [D]    |
| encoder/layer/<i>/attention/self/{query,key,value}/kernel| [D, D] |  i = "0" .. str(L-1)
| encoder/layer/<i>/attention/self/{query,key,value}/bias  | [D]    |
| encoder/layer/<i>/attention/output/dense/kernel          | [D, D] |
| encoder/layer/<i>/attention/output/dense/bias            | [D]    |
| encoder/layer/<i>/attention/output/LayerNorm/{scale,bias}| [D]    |
| encoder/layer/<i>/intermediate/dense/{kernel,bias}       | [D, I], [I] |
| encoder/layer/<i>/output/dense/{kernel,bias}             | [I, D], [D] |
| encoder/layer/<i>/output/LayerNorm/{scale,bias}          | [D]    |
| pooler/dense/{kernel,bias}                               | [D, D], [D] | with a pooler
| cls/predictions/transform/dense/{kernel,bias}            | [D, D], [D] | with an MLM head
| cls/predictions/transform/LayerNorm/{scale,bias}         | [D]    |
| cls/predictions/bias                                     | [V]    |
| cls/predictions/decoder/kernel                           | [D, V] | untied decoder only
| classifier/{kernel,bias}                                 | [D, C], [C] | C = num_labels

`param_shapes` is the single source of this table for init, load, convert and the tests.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.model.config import BertConfig


@dataclasses.dataclass(frozen=True)
class Heads:
    """Which optional parts a parameter tree has."""

    pooler: bool = True
    mlm: bool = False
    untied_decoder: bool = False
    classifier: bool = False

    @classmethod
    def of(cls, params: dict) -> Heads:
        """Reads the heads present in a parameter tree."""
        predictions = params.get("cls", {}).get("predictions", {})
        return cls(pooler="pooler" in params, mlm="transform" in predictions,
                   untied_decoder="decoder" in predictions, classifier="classifier" in params)


def _dense(d_in: int, d_out: int, dtype) -> dict:
    return {"kernel": jax.ShapeDtypeStruct((d_in, d_out), dtype),
            "bias": jax.ShapeDtypeStruct((d_out,), dtype)}


def _norm(d: int, dtype) -> dict:
    return {"scale": jax.ShapeDtypeStruct((d,), dtype), "bias": jax.ShapeDtypeStruct((d,), dtype)}


def _table(rows: int, d: int, dtype) -> dict:
    return {"embedding": jax.ShapeDtypeStruct((rows, d), dtype)}


def layer_shapes(config: BertConfig, dtype=jnp.float32) -> dict:
    """Shapes of one encoder layer's subtree."""
    D, I = config.hidden_size, config.intermediate_size
    return {
        "attention": {
            "self": {"query": _dense(D, D, dtype), "key": _dense(D, D, dtype),
                     "value": _dense(D, D, dtype)},
            "output": {"dense": _dense(D, D, dtype), "LayerNorm": _norm(D, dtype)},
        },
        "intermediate": {"dense": _dense(D, I, dtype)},
        "output": {"dense": _dense(I, D, dtype), "LayerNorm": _norm(D, dtype)},
    }


def param_shapes(config: BertConfig, heads: Heads = Heads(), dtype=jnp.float32) -> dict:
    """The parameter tree as `jax.ShapeDtypeStruct` leaves, for the given heads."""
    D, V = config.hidden_size, config.vocab_size
    tree = {
        "embeddings": {
            "word_embeddings": _table(V, D, dtype),
            "position_embeddings": _table(config.max_position_embeddings, D, dtype),
            "token_type_embeddings": _table(config.type_vocab_size, D, dtype),
            "LayerNorm": _norm(D, dtype),
        },
        "encoder": {"layer": {str(i): layer_shapes(config, dtype)
                              for i in range(config.num_hidden_layers)}},
    }
    if heads.pooler:
        tree["pooler"] = {"dense": _dense(D, D, dtype)}
    if heads.mlm:
        predictions = {"transform": {"dense": _dense(D, D, dtype), "LayerNorm": _norm(D, dtype)},
                       "bias": jax.ShapeDtypeStruct((V,), dtype)}
        if heads.untied_decoder:
            predictions["decoder"] = {"kernel": jax.ShapeDtypeStruct((D, V), dtype)}
        tree["cls"] = {"predictions": predictions}
    if heads.classifier:
        tree["classifier"] = _dense(D, config.num_labels, dtype)
    return tree


def init_params(rng: jax.Array, config: BertConfig, heads: Heads = Heads(),
                dtype=jnp.float32) -> dict:
    """Random parameters as BERT initialises them: normal(initializer_range) weights, zero biases,
    LayerNorm scale one."""
    shapes = param_shapes(config, heads, dtype)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rngs = jax.random.split(rng, len(leaves))
    out = []
    for (path, leaf), r in zip(leaves, rngs):
        last = path[-1].key
        if last == "scale":
            out.append(jnp.ones(leaf.shape, dtype))
        elif last == "bias":
            out.append(jnp.zeros(leaf.shape, dtype))
        else:
            w = config.initializer_range * jax.random.normal(r, leaf.shape, jnp.float32)
            out.append(w.astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def path_str(path) -> str:
    """'a/b/c' for a jax tree path."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def flatten(tree: dict) -> dict[str, object]:
    """{'a/b/c': leaf} for a nested dict."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, object]) -> dict:
    """Nested dicts from {'a/b/c': leaf}."""
    tree: dict = {}
    for key, leaf in flat.items():
        node = tree
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def check_params(params: dict, config: BertConfig, where: str = "params") -> Heads:
    """Checks a tree against `param_shapes`: same keys, same shapes, floating dtypes.

    Returns the heads found. Raises ValueError listing missing and unexpected paths, or the first
    path whose shape disagrees with the config.
    """
    heads = Heads.of(params)
    want = flatten(param_shapes(config, heads))
    got = flatten(params)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        raise ValueError(f"{where} do not match the BERT parameter tree ({'; '.join(parts)})")
    for key, spec in want.items():
        shape = tuple(np.shape(got[key]))
        if shape != spec.shape:
            raise ValueError(f"{where}: {key} has shape {shape}, the config needs {spec.shape}")
        if not jnp.issubdtype(got[key].dtype, jnp.floating):
            raise ValueError(f"{where}: {key} has dtype {got[key].dtype}, expected a float dtype")
    return heads


def count_params(params: dict) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params))


def cast(params: dict, dtype) -> dict:
    """Casts every leaf to `dtype` (a correctly rounded cast)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), params)
