"""Sequence-to-sequence pairs from a user file (`data.format: pairs`): one pair a line.

Format
    A UTF-8 text file, or a folder of them (recursively, in sorted order; hidden files and
    folders skipped), with one ``source<TAB>target`` pair per line: exactly one tab, a
    non-empty target (the source may be empty: unconditional generation). Empty lines are
    skipped and a trailing ``\\r`` is dropped. Anything else is a `DataError` naming the file,
    the line and the expected format.

Rows
    ``source SEP target EOS``, tokenised with the run's tokenizer (`byte`, or `bpe` trained
    on the training pairs' lines with `data.vocab_size`): SEP is the token of ``\\t`` and EOS
    that of ``\\n``, so a row decodes back to its line and ``seqlab sample RUN --prompt
    "source\\t"`` asks for a target. The target and EOS are scored, the source and SEP are
    not: they are the clean context every objective conditions on. Rows are right-padded
    with EOS (unscored) to the longest row of their batch; a row may hold at most
    ``data.seq_len + 1`` tokens (the text task's window), a longer pair is a `DataError`.

Splits
    Each pair goes to a split by a hash of its source (sha1, first 8 bytes as a fraction u):
    u < 0.05 validation, u < 0.10 test, else train, so every pair with the same source lands
    in the same split, for any file order. A split left empty is a `DataError`.

Batches
    Training rows are drawn uniformly (with replacement) from the split by a generator seeded
    with (seed, split, step), as `TextData` draws windows; evaluation takes the split's
    pairs in file order, at most ``max_tokens // width`` of them (width: its longest row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqlab.data.corpora import SPLITS, hash_fraction, list_files, read_text
from seqlab.data.tasks.base import capped_rows, check_batch_request, eval_slices
from seqlab.data.tokenizers import (
    HF_PREFIX,
    TOKENIZER_NAMES,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
)
from seqlab.errors import DataError, UnknownNameError
from seqlab.objectives.base import Batch

SEPARATOR, END = "\t", "\n"
PAIR_FRACTIONS = {"validation": 0.05, "test": 0.05}
EXPECTED = "one 'source<TAB>target' pair per line"


@dataclass(frozen=True)
class Pair:
    """One line's pair and where it came from (``file:line``, for errors)."""

    source: str
    target: str
    where: str


def pair_split(source: str) -> str:
    """The split of every pair whose source is `source` (see the module docstring)."""
    u = hash_fraction(source)
    if u < PAIR_FRACTIONS["validation"]:
        return "validation"
    return "test" if u < PAIR_FRACTIONS["validation"] + PAIR_FRACTIONS["test"] else "train"


def parse_pairs(text: str, name: str) -> list[Pair]:
    """The pairs of one file's `text` (`name` labels errors)."""
    pairs = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        where = f"{name} line {number}"
        tabs = line.count(SEPARATOR)
        if tabs != 1:
            found = "no tab" if tabs == 0 else f"{tabs} tabs"
            raise DataError(f"{where}: expected {EXPECTED}, found {found}")
        source, target = line.split(SEPARATOR)
        if not target:
            raise DataError(f"{where}: empty target; expected {EXPECTED} with a non-empty target")
        pairs.append(Pair(source, target, where))
    return pairs


def read_pairs(path: str) -> list[Pair]:
    """Every pair of the file or folder `path`, in file and line order."""
    root = Path(path).expanduser().resolve()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = [root / relative for relative, _, _ in list_files(root)]
    else:
        raise DataError(f"pairs path {path!r} does not exist (resolved to {root})")
    pairs = []
    for file in files:
        text = read_text(file)
        if text is None:
            raise DataError(f"{file}: not a UTF-8 text file; expected {EXPECTED}")
        pairs += parse_pairs(text, str(file))
    if not pairs:
        raise DataError(f"{path}: no pairs; expected {EXPECTED}")
    return pairs


def pair_tokenizer(name: str, vocab_size: int, train: list[Pair]) -> Tokenizer:
    """The byte tokenizer, BPE trained on the training pairs' lines, or a pretrained one."""
    if name.startswith(HF_PREFIX):
        return load_tokenizer(name)
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        lines = (f"{p.source}{SEPARATOR}{p.target}{END}" for p in train)
        return BPETokenizer.train(lines, vocab_size)
    raise UnknownNameError("tokenizer", name, TOKENIZER_NAMES)


class PairData:
    """Tokenised pairs of the three splits as rows `source SEP target EOS` (see the module
    docstring); `batch` and `eval_batches` give `Batch`es whose mask scores the targets."""

    def __init__(self, pairs: dict[str, list[Pair]], tokenizer: Tokenizer, seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.sep, self.eos = (self._single(tokenizer, text) for text in (SEPARATOR, END))
        self.rows = {split: [self._row(pair) for pair in pairs.get(split, [])] for split in SPLITS}
        for split, rows in self.rows.items():
            if not rows:
                raise DataError(
                    f"no pair falls in the {split} split: pairs are split by a hash of their "
                    f"source ({PAIR_FRACTIONS['validation']:.0%} validation, "
                    f"{PAIR_FRACTIONS['test']:.0%} test); give more pairs with distinct sources"
                )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @staticmethod
    def _single(tokenizer: Tokenizer, text: str) -> int:
        ids = tokenizer.encode(text)
        if len(ids) != 1:
            raise DataError(f"the tokenizer encodes {text!r} as {len(ids)} tokens, not one")
        return ids[0]

    def _row(self, pair: Pair) -> tuple[np.ndarray, int]:
        """A pair's tokens and the length of its unscored part (source and SEP)."""
        source = self.tokenizer.encode(pair.source)
        row = np.array([*source, self.sep, *self.tokenizer.encode(pair.target), self.eos])
        if len(row) > self.seq_len + 1:
            raise DataError(
                f"{pair.where}: the pair is {len(row)} tokens as a row (source, tab, target, "
                f"newline); data.seq_len={self.seq_len} allows {self.seq_len + 1}: raise "
                f"data.seq_len or shorten the pair"
            )
        return row.astype(np.int64), len(source) + 1

    def pad(self, rows: list[tuple[np.ndarray, int]], width: int | None = None) -> Batch:
        """Rows right-padded with EOS to `width` (default: the longest), targets scored."""
        width = width or max(len(tokens) for tokens, _ in rows)
        tokens = torch.full((len(rows), width), self.eos, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, source) in enumerate(rows):
            tokens[i, : len(row)] = torch.from_numpy(row)
            mask[i, source : len(row)] = True
        return Batch(tokens, mask)

    def batch(
        self,
        split: str,
        step: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> Batch:
        """`batch_size` rows drawn from `split` (rank `rank` of the global batch), padded to
        the global batch's longest row so every rank agrees."""
        rows = self._split(split)
        check_batch_request(step, seed, batch_size, rank, world_size)
        rng = np.random.default_rng([seed, SPLITS.index(split), step])
        chosen = [rows[i] for i in rng.integers(0, len(rows), size=batch_size * world_size)]
        width = max(len(tokens) for tokens, _ in chosen)
        return self.pad(chosen[rank * batch_size : (rank + 1) * batch_size], width)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        """The split's pairs in file order (as many as `max_tokens` allows), padded to the
        split's longest row."""
        rows = self._split(split)
        width = max(len(tokens) for tokens, _ in rows)
        count = capped_rows("pairs", split, len(rows), width, max_tokens)
        for chunk in eval_slices(count, batch_size):
            yield self.pad(rows[chunk], width)

    def bytes_per_token(self, split: str) -> None:
        """Pairs are scored per target token and by accuracy, not in bits per byte."""
        return None

    def _split(self, split: str) -> list[tuple[np.ndarray, int]]:
        if split not in self.rows:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return self.rows[split]


def load_pairs(path: str | None, *, tokenizer: str, vocab_size: int, seq_len: int) -> PairData:
    """The pairs of the file or folder `path`, split and tokenised (see the module docstring)."""
    if not path:
        raise DataError(f"data.format: pairs needs data.path, a file or folder of {EXPECTED}")
    pairs: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for pair in read_pairs(path):
        pairs[pair_split(pair.source)].append(pair)
    return PairData(pairs, pair_tokenizer(tokenizer, vocab_size, pairs["train"]), seq_len)
