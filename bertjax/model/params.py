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

The other encoder families use the same names wherever they have the same part
(conversion/FAMILIES.md): E = embed_size for the embedding tables and their LayerNorm,
`embeddings/project` [E, D] (ALBERT; ELECTRA when E != D), no token type table when
type_vocab_size is 0, `encoder/relative_attention_bias/embedding` [R, N] (MPNet), the MLM head
D -> E -> V, `discriminator_predictions` (ELECTRA), `sop_classifier` (ALBERT), and the sequence
classifier as `classifier/{dense,out_proj}` or `pre_classifier` + `classifier`. ALBERT stores
num_param_layers = num_hidden_groups x inner_group_num layers, read by the applied layers.

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
    disc: bool = False  # ELECTRA's discriminator (replaced-token detection)
    sop: bool = False  # ALBERT's sentence-order prediction
    # The classifier's form: "linear" (classifier/{kernel,bias}: BERT/ALBERT sequence head, every
    # family's token head), "dense" (classifier/{dense,out_proj}: RoBERTa family, ELECTRA, MPNet
    # sequence head), "pre" (pre_classifier + classifier: DistilBERT's sequence head).
    classifier_form: str = "linear"

    @classmethod
    def of(cls, params: dict) -> Heads:
        """Reads the heads present in a parameter tree."""
        predictions = params.get("cls", {}).get("predictions", {})
        classifier = params.get("classifier")
        form = ("dense" if isinstance(classifier, dict) and "dense" in classifier
                else "pre" if "pre_classifier" in params
                else "head" if "head" in params else "linear")
        return cls(pooler="pooler" in params, mlm="transform" in predictions,
                   untied_decoder="decoder" in predictions, classifier=classifier is not None,
                   disc="discriminator_predictions" in params, sop="sop_classifier" in params,
                   classifier_form=form)


def _dense(d_in: int, d_out: int, dtype, bias: bool = True) -> dict:
    kernel = {"kernel": jax.ShapeDtypeStruct((d_in, d_out), dtype)}
    return {**kernel, "bias": jax.ShapeDtypeStruct((d_out,), dtype)} if bias else kernel


def _norm(d: int, dtype, bias: bool = True) -> dict:
    scale = {"scale": jax.ShapeDtypeStruct((d,), dtype)}
    return {**scale, "bias": jax.ShapeDtypeStruct((d,), dtype)} if bias else scale


def _table(rows: int, d: int, dtype) -> dict:
    return {"embedding": jax.ShapeDtypeStruct((rows, d), dtype)}


def layer_shapes(config: BertConfig, dtype=jnp.float32, index: int = 1) -> dict:
    """Shapes of one encoder layer's subtree (`index`: the parameter layer; ModernBERT's layer 0
    has no attention norm)."""
    D, I = config.hidden_size, config.intermediate_size
    if config.pre_norm:
        return _pre_norm_layer_shapes(config, dtype, index)
    layer = _post_norm_layer_shapes(config, dtype)
    self_attention = layer["attention"]["self"]
    if not config.share_att_key and "c2p" in config.position_terms:
        self_attention["pos_key_proj"] = _dense(D, D, dtype)
    if not config.share_att_key and "p2c" in config.position_terms:
        self_attention["pos_query_proj"] = _dense(D, D, dtype)
    del I
    return layer


def _pre_norm_layer_shapes(config: BertConfig, dtype, index: int) -> dict:
    """ModernBERT's layer: attn_norm (not at layer 0), fused qkv [D, 3D], output dense, mlp_norm,
    the GeGLU input dense [D, 2I] and output dense [I, D]."""
    D, I, c = config.hidden_size, config.intermediate_size, config
    layer = {"attention": {"self": {"qkv": _dense(D, 3 * D, dtype, c.attention_bias)},
                           "output": {"dense": _dense(D, D, dtype, c.attention_bias)}},
             "mlp_norm": _norm(D, dtype, c.norm_bias),
             "intermediate": {"dense": _dense(D, 2 * I, dtype, c.mlp_bias)},
             "output": {"dense": _dense(I, D, dtype, c.mlp_bias)}}
    if index > 0:
        layer["attn_norm"] = _norm(D, dtype, c.norm_bias)
    return layer


def _post_norm_layer_shapes(config: BertConfig, dtype) -> dict:
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
    D, E, V = config.hidden_size, config.embed_size, config.vocab_size
    embeddings = {"word_embeddings": _table(V, E, dtype)}
    if config.has_position_table:
        embeddings["position_embeddings"] = _table(config.max_position_embeddings, E, dtype)
    if config.has_token_types:
        embeddings["token_type_embeddings"] = _table(config.type_vocab_size, E, dtype)
    embeddings["LayerNorm"] = _norm(config.embed_norm_size, dtype, config.norm_bias)
    if config.has_projection:
        embeddings["project"] = _dense(E, D, dtype, not config.projection_before_norm)
    encoder = {"layer": {str(i): layer_shapes(config, dtype, i)
                         for i in range(config.num_param_layers)}}
    encoder.update(_encoder_extras(config, dtype))
    tree = {"embeddings": embeddings, "encoder": encoder}
    if heads.pooler:
        tree["pooler"] = {"dense": _dense(D, D, dtype)}
    if heads.mlm:
        M = config.mlm_size
        predictions = {"transform": {"dense": _dense(D, M, dtype, config.classifier_bias),
                                     "LayerNorm": _norm(M, dtype, config.norm_bias)}}
        if config.decoder_bias:
            predictions["bias"] = jax.ShapeDtypeStruct((V,), dtype)
        if heads.untied_decoder:
            predictions["decoder"] = {"kernel": jax.ShapeDtypeStruct((M, V), dtype)}
        tree["cls"] = {"predictions": predictions}
    if heads.disc:
        tree["discriminator_predictions"] = {"dense": _dense(D, D, dtype),
                                             "dense_prediction": _dense(D, 1, dtype)}
    if heads.sop:
        tree["sop_classifier"] = _dense(D, config.num_labels, dtype)
    if heads.classifier:
        tree.update(classifier_shapes(config, heads.classifier_form, dtype))
    return tree


def _encoder_extras(config: BertConfig, dtype) -> dict:
    """The encoder's parts beside its layers: MPNet's relative bias table; DeBERTa's relative
    embeddings [2 x span, D], their LayerNorm and the convolution after layer 0
    (`conv/conv/kernel` [k, D / groups, D]); ModernBERT's final norm."""
    D, extras = config.hidden_size, {}
    if config.relative_attention_num_buckets:
        extras["relative_attention_bias"] = _table(config.relative_attention_num_buckets,
                                                   config.num_attention_heads, dtype)
    if config.relative_attention:
        extras["rel_embeddings"] = _table(2 * config.rel_span, D, dtype)
    if "layer_norm" in config.norm_rel_ebd.lower():
        extras["LayerNorm"] = _norm(D, dtype)
    if config.conv_kernel_size:
        k, g = config.conv_kernel_size, config.conv_groups
        extras["conv"] = {"conv": {"kernel": jax.ShapeDtypeStruct((k, D // g, D), dtype),
                                   "bias": jax.ShapeDtypeStruct((D,), dtype)},
                          "LayerNorm": _norm(D, dtype)}
    if config.pre_norm:
        extras["final_norm"] = _norm(D, dtype, config.norm_bias)
    return extras


def classifier_shapes(config: BertConfig, form: str = "linear", dtype=jnp.float32) -> dict:
    """The classifier subtrees of a form (`Heads.classifier_form`): {"classifier": ...} and, for
    "pre", {"pre_classifier": ...}."""
    D, C = config.hidden_size, config.num_labels
    if form == "linear":
        return {"classifier": _dense(D, C, dtype)}
    if form == "dense":
        return {"classifier": {"dense": _dense(D, D, dtype), "out_proj": _dense(D, C, dtype)}}
    if form == "pre":
        return {"pre_classifier": _dense(D, D, dtype), "classifier": _dense(D, C, dtype)}
    if form == "head":  # ModernBERT: head (dense, act, norm) then the classifier, seq or token
        return {"head": {"dense": _dense(D, D, dtype, config.classifier_bias),
                         "LayerNorm": _norm(D, dtype, config.norm_bias)},
                "classifier": _dense(D, C, dtype)}
    raise ValueError(f"classifier form must be 'linear', 'dense', 'pre' or 'head', got {form!r}")


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


# The config fields that size the tree (num_attention_heads sizes no leaf: the config itself
# checks that it divides hidden_size).
_SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "num_labels", "embedding_size",
                "num_hidden_groups", "inner_group_num", "relative_attention_num_buckets",
                "position_buckets", "max_relative_positions", "conv_kernel_size")
# (tree structure, leaf shapes and dtypes, config, part) of the trees that passed `check_tree`.
_CHECKED: set = set()


def _expected(config: BertConfig, heads: Heads, stacked: bool) -> dict[str, tuple]:
    """Tree path -> shape of the whole tree; encoder layers stacked to [L, ...] when `stacked`."""
    tree = param_shapes(config, heads)
    if stacked:  # every layer's leaves (ModernBERT's layer 0 gets a placeholder attention norm)
        one = layer_shapes(config, index=1)
        L = config.num_param_layers
        tree["encoder"]["layer"] = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct((L, *s.shape), s.dtype), one)
    return {path: spec.shape for path, spec in flatten(tree).items()}


def _fields(path: str, shape: tuple, config: BertConfig, heads: Heads, stacked: bool) -> str:
    """The config fields that size the axes where `shape` differs from what the leaf at `path`
    needs, with their values."""
    need = _expected(config, heads, stacked)[path]
    axes = ([i for i, (a, b) in enumerate(zip(shape, need)) if a != b]
            if len(shape) == len(need) else list(range(len(need))))
    found = []
    for name in _SIZE_FIELDS:
        if not getattr(config, name):  # a field the family does not use (None or 0)
            continue
        try:
            other = dataclasses.replace(config, num_attention_heads=1, id2label=(),
                                        **{name: getattr(config, name) + 1})
        except ValueError:
            continue
        changed = _expected(other, heads, stacked).get(path)
        if changed is not None and any(changed[i] != need[i] for i in axes):
            found.append(f"{name}={getattr(config, name)}")
    return ", ".join(found)


def _listed(kind: str, names: list[str], most: int = 8, others=None) -> str:
    """'missing 16: encoder/layer/2 (16 leaves)': with `others` (the leaves on the other side), the
    names grouped by their largest subtree that `others` has nothing of."""
    groups = _subtrees(names, others) if others is not None else [(n, [n]) for n in names]
    shown = [held[0] if len(held) == 1 else f"{g} ({len(held)} leaves)" for g, held in groups[:most]]
    return f"{kind} {len(names)}: {', '.join(shown)}" + (" ..." if len(groups) > most else "")


def _subtrees(names: list[str], others) -> list[tuple[str, list[str]]]:
    """[(subtree, the names it holds)]: each name under the shortest prefix of its path that no
    path of `others` shares."""
    prefixes = {"/".join(o.split("/")[:i]) for o in others for i in range(1, o.count("/") + 2)}
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split("/")
        group = next(("/".join(parts[:i]) for i in range(1, len(parts) + 1)
                      if "/".join(parts[:i]) not in prefixes), name)
        groups.setdefault(group, []).append(name)
    return list(groups.items())


def _layer_count(params: dict, config: BertConfig) -> str:
    """'the tree has n layers ...' when a per-layer tree's layer keys disagree with the config."""
    layers = params.get("encoder", {}).get("layer") if isinstance(params.get("encoder"), dict) else None
    if not isinstance(layers, dict) or "0" not in layers:
        return ""
    if set(layers) == {str(i) for i in range(config.num_param_layers)}:
        return ""
    says = (f"num_hidden_layers={config.num_hidden_layers}" if config.model_type != "albert" else
            f"num_hidden_groups x inner_group_num={config.num_param_layers}")
    return (f"the tree has {len(layers)} layers ({', '.join(sorted(layers, key=str))}), the "
            f"config says {says}")


def _mismatch(where: str, full: dict, config: BertConfig, missing: list, unexpected: list,
              got: set, want: set) -> str:
    """The missing / unexpected leaves message, leading with the cause when it is the layer count."""
    parts = ([_listed("missing", missing, others=got)] if missing else []) + (
        [_listed("unexpected", unexpected, others=want)] if unexpected else [])
    cause = _layer_count(full, config)
    family = "BERT" if config.model_type == "bert" else config.model_type
    head = f"{where}: {cause}" if cause else f"{where} do not match the {family} parameter tree"
    return f"{head} ({'; '.join(parts)})"


# The parts that take one subtree, and the function of each (for the message).
_PART_FUNCTIONS = {"embeddings": "embeddings", "encoder/layer/0": "encoder_layer",
                   "encoder/layer/0/attention": "attention"}


def _check_not_a_larger_tree(params: dict, part: str, where: str) -> None:
    """A part given the whole tree (or a tree above its own) says which subtree it takes."""
    steps = part.split("/")
    above = next((i for i, k in enumerate(steps) if k in params and not k.isdigit()), None)
    if above is None or part not in _PART_FUNCTIONS:
        return
    index = "".join(f"[{'i' if k.isdigit() else repr(k)}]" for k in steps[above:])
    layer = " (i: the layer, a string)" if "[i]" in index else ""
    raise ValueError(f"{where}: {_PART_FUNCTIONS[part]} takes the subtree "
                     f"{'/'.join('<i>' if k.isdigit() else k for k in steps)}, got a tree holding "
                     f"{steps[above]!r}: pass params{index}{layer}")


def check_tree(params: dict, config: BertConfig, part: str = "", where: str = "params",
               uses: tuple[str, ...] = ()) -> Heads:
    """Checks a tree (or the subtree at `part`, e.g. "embeddings", "encoder", "encoder/layer/0",
    "pooler", "cls") against the shapes `config` implies: the same leaves (no layer more or less),
    each with the shape the config needs and a float dtype. `uses`: the only subtrees of `part`
    that must be there (e.g. attention needs no LayerNorm); others may be left out.

    Shapes and dtypes only, so it works on tracers (under jit, vmap and grad); encoder layers may be
    per-layer or stacked (`stack_layers`). A (structure, shapes, dtypes, config, part) that passed
    is remembered, so checking the same kind of tree again costs one flatten.

    Raises:
      ValueError naming the leaf path, its shape and the config field, a missing or unexpected
      leaf, or a non-float leaf.
    """
    if not isinstance(params, dict):
        raise ValueError(f"{where} must be a dict (the parameter tree), got {type(params).__name__}")
    if part:
        _check_not_a_larger_tree(params, part, where)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    key = (treedef, tuple((x.shape, x.dtype) if hasattr(x, "dtype") else (np.shape(x), None)
                          for x in leaves), config, part, uses)
    if key in _CHECKED:
        return Heads.of(params) if not part else Heads()
    heads = _check_tree(params, config, part, where, uses)
    _CHECKED.add(key)
    return heads


def _check_tree(params: dict, config: BertConfig, part: str, where: str, uses: tuple) -> Heads:
    full = params if not part else {}
    if part:  # the subtree sits at `part` of a whole tree
        node = full
        *parents, last = part.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = params
    try:
        heads = Heads.of(full)
    except AttributeError:
        raise ValueError(f"{where}: cls/predictions must be dicts of arrays") from None
    if part == "cls":
        heads = dataclasses.replace(heads, mlm=True)
    layers = full.get("encoder", {}).get("layer") if isinstance(full.get("encoder"), dict) else None
    stacked = isinstance(layers, dict) and "0" not in layers
    want = {p: s for p, s in _expected(config, heads, stacked).items()
            if not part or p == part or p.startswith(part + "/")}
    got = flatten(full)
    unexpected = sorted(set(got) - set(want))
    if uses:
        want = {p: s for p, s in want.items() if p.startswith(tuple(f"{part}/{u}/" for u in uses))}
    missing = sorted(set(want) - set(got))
    if missing or unexpected:
        raise ValueError(_mismatch(where, full, config, missing, unexpected, set(got), set(want)))
    for path, need in want.items():  # of what there is, each shape and dtype
        shape = tuple(np.shape(got[path]))
        if shape != need:
            raise ValueError(f"{where}: {path} has shape {shape}, the config needs {need} "
                             f"({_fields(path, shape, config, heads, stacked)})")
        dtype = getattr(got[path], "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{where}: {path} has dtype {dtype}, expected a float dtype")
    return heads


def check_params(params: dict, config: BertConfig, where: str = "params") -> Heads:
    """Checks a whole tree against `param_shapes` (see `check_tree`); returns the heads found."""
    return check_tree(params, config, where=where)


def count_params(params: dict) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params))


def cast(params: dict, dtype) -> dict:
    """Casts every leaf to `dtype` (a correctly rounded cast)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), params)
