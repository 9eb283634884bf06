"""Prints the full PyTorch key -> bertjax tree path table (markdown), from
`bertjax.checkpoints.convert.key_table`.

conversion/README.md holds this script's output between its key-table markers, and
tests/test_convert.py checks that the two agree, so the document always says what the code does.
The table is for a model with every optional part (pooler, MLM head with an untied decoder,
classifier); shapes are written in axis letters.

Usage:
  python conversion/key_table.py            # print the table
  python conversion/key_table.py --write    # replace the table in conversion/README.md
"""

from __future__ import annotations

import argparse
import os

from bertjax.checkpoints.convert import key_table
from bertjax.model.config import BertConfig
from bertjax.model.params import Heads, flatten, param_shapes

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
START, END = "<!-- key-table:start -->", "<!-- key-table:end -->"
# Every axis a different size, so that each shape reads back as letters; one layer stands for all.
CONFIG = BertConfig(vocab_size=101, hidden_size=15, num_hidden_layers=1, num_attention_heads=3,
                    intermediate_size=37, max_position_embeddings=13, type_vocab_size=3,
                    num_labels=7)
LETTERS = {101: "V", 15: "D", 37: "I", 13: "P", 3: "Y", 7: "C"}
EVERY_HEAD = Heads(pooler=True, mlm=True, untied_decoder=True, classifier=True)


def _letters(shape) -> str:
    return "[" + ", ".join(LETTERS[n] for n in shape) + "]"


def _any_layer(name: str, sep: str) -> str:
    return name.replace(f"layer{sep}0{sep}", f"layer{sep}<i>{sep}")


def _when(path: str) -> str:
    """Which checkpoints have this row."""
    for prefix, when in (("pooler/", "with a pooler"), ("cls/predictions/decoder/", "untied decoder"),
                         ("cls/", "with an MLM head"), ("classifier/", "with a classifier")):
        if path.startswith(prefix):
            return when
    return "always"


def _reading_order(row) -> int:
    """Rows in the order of the forward: embeddings, encoder, pooler, MLM head, classifier."""
    return ("embeddings", "encoder", "pooler", "cls", "classifier").index(row[1].split("/")[0])


def markdown_table(config: BertConfig = CONFIG, heads: Heads = EVERY_HEAD) -> str:
    """The markdown table of every (PyTorch key, tree path, shape, transposed) row."""
    shapes = flatten(param_shapes(config, heads))
    lines = ["| PyTorch key | tree path | tree shape | transposed (torch shape) | present |",
             "|---|---|---|---|---|"]
    for key, path, transposed in sorted(key_table(config, heads), key=_reading_order):
        shape = shapes[path].shape
        flip = f"yes ({_letters(shape[::-1])})" if transposed else "no"
        lines.append(f"| `{_any_layer(key, '.')}` | `{_any_layer(path, '/')}` | {_letters(shape)} "
                     f"| {flip} | {_when(path)} |")
    return "\n".join(lines) + "\n"


def readme_table(path: str = README) -> str:
    """The table currently in the README, between the markers."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text[text.index(START) + len(START):text.index(END)].strip("\n") + "\n"


def write_readme(path: str = README) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{START}\n{markdown_table()}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"update the table in {README}")
    args = parser.parse_args(argv)
    if args.write:
        write_readme()
    else:
        print(markdown_table(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
