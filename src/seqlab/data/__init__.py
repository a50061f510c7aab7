"""Text data: tokenizers, cached token corpora and training/evaluation batches."""

from seqlab.data.corpora import TokenCorpus, load_corpus
from seqlab.data.text import TextData
from seqlab.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "TextData",
    "TokenCorpus",
    "Tokenizer",
    "load_corpus",
    "load_tokenizer",
]
