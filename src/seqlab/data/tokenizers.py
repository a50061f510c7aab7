"""Tokenizers: raw UTF-8 bytes, or byte-level BPE trained locally with the `tokenizers` package.

Both are lossless: `decode(encode(text)) == text` for any string. Token ids are plain ints in
`[0, vocab_size)`. Besides the `Tokenizer` protocol, the two concrete classes offer
`encode_batch`, which returns numpy arrays and is what corpus building uses.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from seqlab.errors import DataError, SeqlabError, UnknownNameError

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_NAMES = ("byte", "bpe")
MIN_BPE_VOCAB = 256


@runtime_checkable
class Tokenizer(Protocol):
    """What models, trainers and samplers need from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id is in ``[0, vocab_size)``."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; never raises on ids that came from the model."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write whatever `load_tokenizer(self.name, directory)` needs into `directory`."""
        ...


def _as_int_array(ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Ids from a list, numpy array or tensor (on any device) as a 1-D int64 array."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {array.shape}")
    return array


class ByteTokenizer:
    """One token per UTF-8 byte (vocabulary 256); nothing to train or save."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's bytes as a uint8 array (no Python ints involved)."""
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes back to text; invalid UTF-8 (e.g. a sample cut mid-character) becomes U+FFFD."""
        array = _as_int_array(ids)
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"byte token ids must be in [0, 255], got {array.min()}..{array.max()}"
            )
        return array.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Nothing to write: the byte tokenizer has no state."""

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise SeqlabError(
            "the 'bpe' tokenizer needs the 'tokenizers' package: pip install 'seqlab[bpe]'"
        ) from None
    return tokenizers


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation, no special tokens, no normaliser).

    The 256 byte symbols are always in the vocabulary, so any text encodes without unknown
    tokens and decodes back exactly.
    """

    name = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from `texts` until the vocabulary holds `vocab_size` tokens.

        The result may be smaller than `vocab_size` when the texts run out of pairs to merge.
        """
        if vocab_size < MIN_BPE_VOCAB:
            raise SeqlabError(
                f"BPE vocab_size must be at least {MIN_BPE_VOCAB} (the byte alphabet), "
                f"got {vocab_size}"
            )
        tk = _import_tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BPETokenizer:
        """Read `directory/tokenizer.json` as written by `save`."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise DataError(
                f"no BPE tokenizer at {path}: train one with load_corpus(tokenizer='bpe') "
                "or BPETokenizer.train, then save it there"
            )
        tk = _import_tokenizers()
        try:
            return cls(tk.Tokenizer.from_file(str(path)))
        except Exception as err:
            raise DataError(f"{path}: not a valid tokenizers JSON file ({err})") from None

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write `directory/tokenizer.json` atomically (creating the directory)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{TOKENIZER_FILE}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            self._tokenizer.save(tmp)
            os.replace(tmp, directory / TOKENIZER_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode several texts at once (in parallel inside `tokenizers`) as uint32 arrays."""
        # encode_batch_fast (tokenizers >= 0.21) skips computing offsets
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        encodings = encode(list(texts))
        return [np.asarray(encoding.ids, dtype=np.uint32) for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(_as_int_array(ids).tolist(), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(name: str, directory: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer called `name`; "bpe" is read from `directory/tokenizer.json`."""
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        if directory is None:
            raise SeqlabError("the 'bpe' tokenizer needs the directory it was saved in")
        return BPETokenizer.load(directory)
    raise UnknownNameError("tokenizer", name, TOKENIZER_NAMES)
