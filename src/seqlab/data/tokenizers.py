"""Tokenizers: raw UTF-8 bytes, byte-level BPE trained locally with the `tokenizers` package,
or a pretrained Hugging Face tokenizer read from local files (`hf:PATH`).

Byte and BPE are lossless: `decode(encode(text)) == text` for any string. Token ids are plain
ints in `[0, vocab_size)`. Besides the `Tokenizer` protocol, the concrete classes offer
`encode_batch`, which returns numpy arrays and is what corpus building uses.

`hf:PATH` names a `tokenizer.json` file or a tokenizer folder (its `tokenizer.json` read with
the `tokenizers` library; a folder without one through `transformers.AutoTokenizer`). Its
vocabulary size is the tokenizer's, added tokens included; its end-of-sequence token is the
`eos_token` of the `tokenizer_config.json` beside it, else the first of `EOS_TOKENS` in its
vocabulary. A corpus of documents is tokenised as each document's text followed by that
token (`encode_documents`), in place of the newline the other tokenizers separate documents
with. A run saves the tokenizer's files into its directory, and `load_tokenizer` reads that
copy first, so a run stays usable when PATH moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from seqlab.errors import DataError, SeqlabError, UnknownNameError
from seqlab.files import atomic_write_json

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_NAMES = ("byte", "bpe", "hf:PATH")
HF_PREFIX = "hf:"
MIN_BPE_VOCAB = 256
# end-of-sequence tokens of common pretrained tokenizers, tried in this order when no
# tokenizer_config.json names one
EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")


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


def _import_tokenizers(kind: str = "bpe") -> Any:
    try:
        import tokenizers
    except ImportError:
        raise SeqlabError(
            f"the {kind!r} tokenizer needs the 'tokenizers' package: pip install 'seqlab[bpe]'"
        ) from None
    return tokenizers


def _save_tokenizer_json(tokenizer: tokenizers.Tokenizer, directory: Path) -> None:
    """Write `directory/tokenizer.json` atomically (creating the directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{TOKENIZER_FILE}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, directory / TOKENIZER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        _save_tokenizer_json(self._tokenizer, Path(directory))

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


def _eos_from_config(path: Path) -> str | None:
    """The `eos_token` of a tokenizer_config.json (a string or an added-token mapping)."""
    if not path.is_file():
        return None
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a readable tokenizer config ({err})") from None
    return eos.get("content") if isinstance(eos, dict) else eos


class HFTokenizer:
    """A pretrained tokenizer read from local files (`hf:PATH`, see the module docstring):
    ids without added special tokens, documents ended by its end-of-sequence token."""

    def __init__(self, name: str, tokenizer: tokenizers.Tokenizer, eos_token: str) -> None:
        self.name, self._tokenizer, self.eos_token = name, tokenizer, eos_token
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(f"{name}: its end-of-sequence token {eos_token!r} is not a token")
        self.eos_id: int = eos_id

    @classmethod
    def load(cls, name: str, directory: str | os.PathLike[str] | None = None) -> HFTokenizer:
        """The tokenizer `name` ("hf:PATH"): the copy a run saved in `directory` if there is
        one, else PATH (a tokenizer.json file or a tokenizer folder)."""
        spec = name[len(HF_PREFIX) :]
        if not name.startswith(HF_PREFIX) or not spec:
            raise DataError(f"a Hugging Face tokenizer is named hf:PATH, got {name!r}")
        path = Path(spec).expanduser()
        if directory is not None and (Path(directory) / TOKENIZER_FILE).is_file():
            path = Path(directory)
        tk = _import_tokenizers(name)
        folder = path if path.is_dir() else path.parent
        file = path / TOKENIZER_FILE if path.is_dir() else path
        eos = _eos_from_config(folder / TOKENIZER_CONFIG_FILE)
        if file.is_file():
            try:
                tokenizer = tk.Tokenizer.from_file(str(file))
            except Exception as err:
                raise DataError(f"{file}: not a valid tokenizers JSON file ({err})") from None
        elif path.is_dir():
            tokenizer, eos = cls._auto(path, eos)
        else:
            raise DataError(f"{name}: expected a tokenizer.json file or a tokenizer folder")
        if eos is None:
            eos = next((t for t in EOS_TOKENS if tokenizer.token_to_id(t) is not None), None)
        if eos is None:
            raise DataError(
                f"{name}: no end-of-sequence token (set eos_token in {TOKENIZER_CONFIG_FILE} "
                f"beside it, or have one of {', '.join(EOS_TOKENS)} in the vocabulary)"
            )
        return cls(name, tokenizer, eos)

    @staticmethod
    def _auto(folder: Path, eos: str | None) -> tuple[tokenizers.Tokenizer, str | None]:
        """A folder without tokenizer.json, through `transformers.AutoTokenizer` (which
        converts a slow tokenizer to a `tokenizers` one)."""
        try:
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:
            raise DataError(f"{folder}: not a tokenizer folder ({err})") from None
        backend = getattr(auto, "backend_tokenizer", None)
        if backend is None:
            raise DataError(f"{folder}: AutoTokenizer gives no fast (tokenizers) tokenizer")
        return backend, eos or auto.eos_token

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def fingerprint(self) -> str:
        """sha256 of the tokenizer's JSON and its end-of-sequence token (a corpus cache key)."""
        text = self._tokenizer.to_str() + "\0" + self.eos_token
        return hashlib.sha256(text.encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.uint32) for encoding in encodings]

    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        """Each document (its one trailing newline, the corpora's separator, dropped)
        followed by the end-of-sequence token."""
        texts = [d[:-1] if d.endswith("\n") else d for d in documents]
        eos = np.asarray([self.eos_id], dtype=np.uint32)
        return [np.concatenate([ids, eos]) for ids in self.encode_batch(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(_as_int_array(ids).tolist(), skip_special_tokens=False)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write `tokenizer.json` and a `tokenizer_config.json` naming its end-of-sequence
        token into `directory`."""
        directory = Path(directory)
        _save_tokenizer_json(self._tokenizer, directory)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.eos_token}
        atomic_write_json(directory / TOKENIZER_CONFIG_FILE, config)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def check_tokenizer_name(name: str) -> None:
    """Raise UnknownNameError unless `name` is byte, bpe or hf:PATH."""
    if name not in ("byte", "bpe") and not (name.startswith(HF_PREFIX) and len(name) > 3):
        raise UnknownNameError("tokenizer", name, TOKENIZER_NAMES)


def load_tokenizer(name: str, directory: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer called `name`; "bpe" is read from `directory/tokenizer.json`, "hf:PATH"
    from there when a run saved it, else from PATH."""
    check_tokenizer_name(name)
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        if directory is None:
            raise SeqlabError("the 'bpe' tokenizer needs the directory it was saved in")
        return BPETokenizer.load(directory)
    return HFTokenizer.load(name, directory)
