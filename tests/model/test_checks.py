"""Bad inputs raise ValueError naming the argument, eagerly; checked_forward catches them under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax


@pytest.fixture(scope="module")
def model():
    config = bertjax.BertConfig(**TINY)
    return config, bertjax.init_params(jax.random.key(0), config)


def _ids(**changes):
    ids, types, mask = tiny_inputs()
    arrays = dict(input_ids=ids, token_type_ids=types, attention_mask=mask)
    arrays.update(changes)
    return arrays


CASES = {
    "id-too-large": (_ids(input_ids=np.full((2, 7), 101, np.int32)),
                     r"input_ids must be in \[0, 101\) \(vocab_size=101\), got 101"),
    "id-negative": (_ids(input_ids=np.full((2, 7), -1, np.int32)), r"input_ids must be in .* got -1"),
    "float-ids": (_ids(input_ids=np.ones((2, 7), np.float32)),
                  "input_ids must hold integer ids, got dtype float32"),
    "ids-rank": (_ids(input_ids=np.ones((7,), np.int32)), r"input_ids must have shape \[B, S\]"),
    "type-too-large": (_ids(token_type_ids=np.full((2, 7), 3, np.int32)),
                       r"token_type_ids must be in \[0, 3\) \(type_vocab_size=3\), got 3"),
    "type-shape": (_ids(token_type_ids=np.zeros((2, 6), np.int32)),
                   r"token_type_ids must have the shape of input_ids \(2, 7\), got \(2, 6\)"),
    "mask-shape": (_ids(attention_mask=np.ones((1, 7), np.int32)),
                   r"attention_mask must have the shape of input_ids \(2, 7\), got \(1, 7\)"),
    "mask-values": (_ids(attention_mask=np.full((2, 7), 2, np.int32)),
                    "attention_mask must hold only 0"),
    "too-long": (_ids(input_ids=np.ones((2, 14), np.int32), token_type_ids=None,
                      attention_mask=None),
                 "input_ids: sequence length 14 exceeds max_position_embeddings=13"),
    "position-too-large": (_ids(position_ids=np.arange(7, 14)),
                           r"position_ids must be in \[0, 13\) .* got 13"),
    "position-shape": (_ids(position_ids=np.arange(6)), r"position_ids must have shape"),
}


@pytest.mark.parametrize("kwargs,match", CASES.values(), ids=CASES.keys())
def test_forward_rejects(model, kwargs, match):
    config, params = model
    with pytest.raises(ValueError, match=match):
        bertjax.forward(params, config=config, **kwargs)


def test_embeddings_rejects_out_of_range_too(model):
    config, params = model
    with pytest.raises(ValueError, match="input_ids must be in"):
        bertjax.embeddings(params, np.full((1, 3), 500, np.int32), config)


def test_config_must_be_a_bertconfig(model):
    # forward's annotation already stops this under the test suite's type checker; users without
    # one get this message from the check forward runs first.
    from bertjax.model.forward import _prepare

    _, params = model
    with pytest.raises(ValueError, match="config must be a bertjax.BertConfig, got dict"):
        _prepare(params, np.ones((1, 3), np.int32), dict(TINY), None, None, None, ())


def test_checked_forward_under_outer_jit(model):
    config, params = model
    ids, types, mask = tiny_inputs()

    @jax.jit
    def run(ids):
        err, out = bertjax.checked_forward(params, ids, config)
        return err, out.last_hidden_state

    err, hidden = run(jnp.asarray(ids))
    err.throw()  # in range: no error
    np.testing.assert_allclose(hidden, bertjax.forward(params, ids, config).last_hidden_state,
                               atol=1e-6)
    err, _ = run(jnp.asarray(ids).at[0, 0].set(101))
    with pytest.raises(Exception, match=r"input_ids must be in \[0, 101\)"):
        err.throw()
