"""Text data: tokenizers, cached token corpora, source/target pairs and training/evaluation
batches."""

from seqlab.data.corpora import TokenCorpus, load_corpus
from seqlab.data.pairs import PairData, load_pairs
from seqlab.data.text import TextData
from seqlab.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "PairData",
    "TextData",
    "TokenCorpus",
    "Tokenizer",
    "load_corpus",
    "load_pairs",
    "load_tokenizer",
]
