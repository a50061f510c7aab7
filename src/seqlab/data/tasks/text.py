"""Language modelling on a corpus (built-in `stdlib`, a user path or a HF dataset)."""

from __future__ import annotations

from collections.abc import Iterator

from seqlab.config import DataConfig
from seqlab.data.corpora import load_corpus
from seqlab.data.tasks.base import Task
from seqlab.data.text import TextData
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS


@TASKS.register("text")
class TextTask(Task):
    """Language modelling on a corpus, scored in bits per byte.

    Windows of `seq_len + 1` tokens; scored in nats per token and bits per byte."""

    scores_answers = False

    def __init__(self, data: DataConfig) -> None:
        corpus = load_corpus(
            data.corpus,
            path=data.path,
            tokenizer=data.tokenizer,
            vocab_size=data.vocab_size,
            cache_dir=data.cache_dir,
            text_field=data.text_field,
            hf_split=data.hf_split,
        )
        self.corpus = corpus
        self.tokenizer = corpus.tokenizer
        self.data = TextData(corpus, data.seq_len)
        self.vocab_size = corpus.tokenizer.vocab_size
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
        tokens = self.data.batch(
            split, step, batch_size, seed=seed, rank=rank, world_size=world_size
        )
        return Batch(tokens)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        for tokens in self.data.eval_batches(split, batch_size, max_tokens):
            yield Batch(tokens)

    def bytes_per_token(self, split: str) -> float:
        return self.data.bytes_per_token(split)
