"""Language modelling on a corpus (built-in `stdlib`, a user path or a HF dataset), or
sequence-to-sequence pairs from a user file (`data.format: pairs`)."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from seqlab.config import DataConfig
from seqlab.data.corpora import TokenCorpus, load_corpus
from seqlab.data.pairs import PairData, load_pairs
from seqlab.data.tasks.base import Task
from seqlab.data.text import TextData
from seqlab.errors import ConfigError
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS


def _as_batch(rows: Tensor | Batch) -> Batch:
    """Text windows (every token scored) or pair rows (already a Batch) as a Batch."""
    return rows if isinstance(rows, Batch) else Batch(rows)


@TASKS.register("text")
class TextTask(Task):
    """Language modelling on a corpus, scored in bits per byte; or source/target pairs.

    `data.format: text`: windows of `seq_len + 1` tokens; scored in nats per token and bits
    per byte. `data.format: pairs`: rows `source TAB target NEWLINE` of a user file
    (`seqlab.data.pairs`), only the target scored; nats per target token, accuracy and
    exact match.

    `infill_span: k` (text format) also scores infilling: in every evaluation row a span of k
    tokens at a seeded position, the same for every objective, given the rest of the row
    (`infill_nll`, `infill_accuracy`; see `Task.evaluate`). `generate_eval` (pairs) also
    scores the targets each objective generates from the source (`generated_*`)."""

    scores_answers = False

    def __init__(
        self, data: DataConfig, infill_span: int | None = None, generate_eval: bool = False
    ) -> None:
        if infill_span is not None and (
            data.format == "pairs"
            or not isinstance(infill_span, int)
            or isinstance(infill_span, bool)
            or not 1 <= infill_span <= data.seq_len
        ):
            raise ConfigError(
                f"text: infill_span must lie in 1 .. data.seq_len ({data.seq_len}) with "
                f"data.format text, got {infill_span!r} with format {data.format!r}"
            )
        if not isinstance(generate_eval, bool) or (generate_eval and data.format != "pairs"):
            raise ConfigError(
                f"text: generate_eval (true or false) scores generated targets of "
                f"data.format pairs, got {generate_eval!r} with format {data.format!r}; "
                f"use infill_span for text windows"
            )
        self.infill_span, self.generate_eval = infill_span, generate_eval
        self.corpus: TokenCorpus | None = None
        self.data: TextData | PairData
        if data.format == "pairs":
            self.data = load_pairs(
                data.path,
                tokenizer=data.tokenizer,
                vocab_size=data.vocab_size,
                seq_len=data.seq_len,
            )
            self.tokenizer = self.data.tokenizer
            self.scores_answers = True
        else:
            self.corpus = load_corpus(
                data.corpus,
                path=data.path,
                tokenizer=data.tokenizer,
                vocab_size=data.vocab_size,
                cache_dir=data.cache_dir,
                text_field=data.text_field,
                hf_split=data.hf_split,
            )
            self.data = TextData(self.corpus, data.seq_len)
            self.tokenizer = self.corpus.tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        self.seq_len = data.seq_len + 1

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
        rows = self.data.batch(split, step, batch_size, seed=seed, rank=rank, world_size=world_size)
        return _as_batch(rows)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        for rows in self.data.eval_batches(split, batch_size, max_tokens):
            yield _as_batch(rows)

    def bytes_per_token(self, split: str) -> float | None:
        return self.data.bytes_per_token(split)
