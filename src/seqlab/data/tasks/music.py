"""Symbolic music: the four-part Bach chorales that ship inside music21, as tokens.

Two encodings of a chorale's four voices (Soprano, Alto, Tenor, Bass, in score order), both
quantised to sixteenth notes (`FRAMES_PER_QUARTER` frames per quarter note):

``grid`` (DeepBach / Coconet style)
    START, then for every sixteenth frame the four voices S A T B in turn, each a pitch
    token (a note starts here), HOLD (the note sounding in the frame before goes on; a tie
    is a hold) or REST (the voice is silent; every silent frame is a REST). A chorale of F
    frames is ``1 + 4·F`` tokens.
``events`` (time-ordered (pitch, duration) events)
    START, then one triple per event, ordered by onset frame and then by voice:
    ``VOICE_v  PITCH_p | REST  DUR_d`` with d in 1 .. `MAX_DURATION` sixteenths. Every frame
    of every voice lies in exactly one event (consecutive silent frames are one REST event),
    so the onset of each event is the end of its voice's previous one: no time shifts are
    needed. An event longer than `MAX_DURATION` goes on in ``VOICE_v HOLD DUR_d`` events
    (its tie).

Ids (`MusicVocabulary`): 0 PAD (never in a row), 1 START, 2 REST, 3 HOLD; ``events`` then has
the four voice markers and the `MAX_DURATION` durations; then one token per MIDI pitch
`LOWEST_PITCH` .. `HIGHEST_PITCH` (C1 .. C7, the chorales' range C2 .. A5 with an octave to
spare for transposition). A pitch outside that range is a DataError (never clamped).

Parsing (`chorale_frames`): ties are merged (`stripTies`), a chord takes its highest pitch,
onsets and ends are rounded to the nearest sixteenth and a note that rounds to no frame (a
grace note) is dropped; a later note overwrites an overlapping earlier one; meter, key and
fermatas are not encoded. The corpus is music21's Riemenschneider chorale list
(`corpus.chorales.Iterator`) in its order, duplicates (two numbers, one file) read once, and
only the chorales of exactly four parts kept (as DeepBach does); `max_chorales` keeps the first
N of them. Parsing takes minutes, so the quantised chorales are cached under the data cache
folder (``<cache>/music/chorales-<hash>/``: ``chorales.npz`` then ``meta.json``, each written
atomically, meta last, under a lock), keyed by the music21 version, the chorale files (name and
size), `max_chorales` and the recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqlab.config import DataConfig
from seqlab.data.corpora import TokenCorpus, build_lock, cache_root
from seqlab.data.tasks.base import SPLITS, Task
from seqlab.data.tasks.synthetic import check
from seqlab.data.text import TextData
from seqlab.errors import ConfigError, DataError
from seqlab.files import atomic_replace, atomic_write_json
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import NLL, Batch
from seqlab.registry import TASKS
from seqlab.sampling.base import eval_mode

if TYPE_CHECKING:
    from music21 import stream

    from seqlab.model import Model
    from seqlab.objectives.base import Objective

log = logging.getLogger(__name__)

ENCODINGS = ("grid", "events")
VOICES = ("Soprano", "Alto", "Tenor", "Bass")
FRAMES_PER_QUARTER = 4
PAD, START, REST, HOLD = 0, 1, 2, 3
FIRST_VOICE = 4
MAX_DURATION = 64  # sixteenths: four 4/4 bars
LOWEST_PITCH, HIGHEST_PITCH = 24, 96
MAX_TRANSPOSE = 12
SILENT = -1  # a frame's pitch where the voice rests
FORMAT_VERSION = 1
RECIPE = {
    "format": FORMAT_VERSION,
    "frames_per_quarter": FRAMES_PER_QUARTER,
    "parts": len(VOICES),
    "chords": "highest",
}
TRANSPOSE_STREAM = 0x7E_A5E
CACHE_ARRAYS = "chorales.npz"
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")
META_FILE = "meta.json"


@dataclass(frozen=True)
class MusicVocabulary:
    """The token ids of one encoding, with readable names (`decode` gives them, `encode`
    reads them back: ``"START P60 HOLD REST ..."``), so it serves as the corpus's tokenizer."""

    encoding: str

    @property
    def first_duration(self) -> int:
        return FIRST_VOICE + len(VOICES)

    @property
    def first_pitch(self) -> int:
        if self.encoding == "grid":
            return FIRST_VOICE
        return self.first_duration + MAX_DURATION

    @property
    def vocab_size(self) -> int:
        return self.first_pitch + HIGHEST_PITCH - LOWEST_PITCH + 1

    def pitch_token(self, midi: np.ndarray) -> np.ndarray:
        return self.first_pitch + np.asarray(midi, dtype=np.int64) - LOWEST_PITCH

    def is_pitch(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return (tokens >= self.first_pitch) & (tokens < self.vocab_size)

    def is_voice(self, token: int) -> bool:
        return self.encoding == "events" and FIRST_VOICE <= token < self.first_duration

    def is_duration(self, token: int) -> bool:
        return self.encoding == "events" and self.first_duration <= token < self.first_pitch

    def names(self) -> list[str]:
        names = ["PAD", "START", "REST", "HOLD"]
        if self.encoding == "events":
            names += [f"V{voice[0]}" for voice in VOICES]
            names += [f"D{d}" for d in range(1, MAX_DURATION + 1)]
        return names + [f"P{midi}" for midi in range(LOWEST_PITCH, HIGHEST_PITCH + 1)]

    def encode(self, text: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.names())}
        unknown = [word for word in text.split() if word not in index]
        if unknown:
            raise DataError(f"music: unknown {self.encoding} token name(s) {unknown[:5]}")
        return [index[word] for word in text.split()]

    def decode(self, ids: Any) -> str:
        names = self.names()
        return " ".join(names[int(i)] for i in np.asarray(ids).reshape(-1))

    def save(self, directory: str | Path) -> None:
        atomic_write_json(Path(directory) / "vocabulary.json", self.names())


def check_range(pitches: np.ndarray) -> None:
    """A DataError when a sounding pitch lies outside `LOWEST_PITCH` .. `HIGHEST_PITCH`."""
    sounding = pitches[pitches != SILENT]
    if sounding.size and (sounding.min() < LOWEST_PITCH or sounding.max() > HIGHEST_PITCH):
        raise DataError(
            f"music: MIDI pitches {int(sounding.min())} .. {int(sounding.max())} leave the "
            f"encodable range {LOWEST_PITCH} .. {HIGHEST_PITCH}"
        )


# ---------------------------------------------------------------------------- parsing


def chorale_frames(score: stream.Score) -> tuple[np.ndarray, np.ndarray]:
    """A four-part score on the sixteenth grid: `pitches` int16 ``[F, 4]`` (MIDI, `SILENT`
    where a voice rests) and `onsets` bool ``[F, 4]`` (a note starts in the frame); F is the
    end of the last note. The rules are in the module docstring."""
    parts = list(score.parts)
    if len(parts) != len(VOICES):
        raise DataError(f"music: a chorale needs exactly 4 parts (S, A, T, B), got {len(parts)}")
    spans: list[list[tuple[int, int, int]]] = []
    for part in parts:
        voice = []
        for element in part.stripTies().flatten().notes:
            start = round(float(element.offset) * FRAMES_PER_QUARTER)
            stop = round(float(element.offset + element.quarterLength) * FRAMES_PER_QUARTER)
            if stop > start:
                voice.append((start, stop, max(p.midi for p in element.pitches)))
        spans.append(voice)
    frames = max((stop for voice in spans for _, stop, _ in voice), default=0)
    pitches = np.full((frames, len(VOICES)), SILENT, dtype=np.int16)
    onsets = np.zeros((frames, len(VOICES)), dtype=bool)
    for v, voice in enumerate(spans):
        for start, stop, midi in voice:
            pitches[start:stop, v] = midi
            onsets[start:stop, v] = False
            onsets[start, v] = True
    return pitches, onsets


# ---------------------------------------------------------------------------- encodings


def encode_grid(pitches: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """The grid tokens (START first) of one chorale's frames, int64 ``[1 + 4·F]``."""
    check_range(pitches)
    vocabulary = MusicVocabulary("grid")
    body = np.where(
        pitches == SILENT, REST, np.where(onsets, vocabulary.pitch_token(pitches), HOLD)
    )
    return np.concatenate([[START], body.reshape(-1)]).astype(np.int64)


def voice_events(pitches: np.ndarray, onsets: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The events of the frames as (onset frame, voice, token, duration), ordered by onset
    then voice: token is a pitch token, REST or HOLD (the continuation of an event longer than
    `MAX_DURATION`)."""
    vocabulary = MusicVocabulary("events")
    frames = len(pitches)
    events = []
    for v in range(pitches.shape[1]):
        column = pitches[:, v]
        silent = column == SILENT
        begins = onsets[:, v] | (silent & np.r_[True, ~silent[:-1]])
        starts = np.flatnonzero(begins)
        for start, end in zip(starts, np.r_[starts[1:], frames], strict=True):
            token = REST if silent[start] else int(vocabulary.pitch_token(column[start]))
            for piece in range(start, end, MAX_DURATION):
                first = piece == start
                events.append(
                    (int(piece), v, token if first else HOLD, min(MAX_DURATION, end - piece))
                )
    return sorted(events, key=lambda event: (event[0], event[1]))


def encode_events(pitches: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """The event tokens (START first) of one chorale's frames, int64 ``[1 + 3·events]``."""
    check_range(pitches)
    vocabulary = MusicVocabulary("events")
    tokens = [START]
    for _, voice, token, duration in voice_events(pitches, onsets):
        tokens += [FIRST_VOICE + voice, token, vocabulary.first_duration + duration - 1]
    return np.array(tokens, dtype=np.int64)


ENCODERS = {"grid": encode_grid, "events": encode_events}


def encode(score: stream.Score, encoding: str = "grid") -> np.ndarray:
    """The tokens of a four-part music21 score in `encoding` (START first)."""
    check_encoding(encoding)
    return ENCODERS[encoding](*chorale_frames(score))


def check_encoding(encoding: object) -> str:
    check(
        encoding in ENCODINGS,
        f"music: encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}",
    )
    return str(encoding)


# ---------------------------------------------------------------------------- decoding

Voice = list[list[Any]]  # [midi or None (a rest), frames] per note or rest, in time order


def _sound(voice: Voice, midi: int | None, frames: int) -> None:
    """Append a note, or a rest (merged into a rest just before it)."""
    if midi is None and voice and voice[-1][0] is None:
        voice[-1][1] += frames
    else:
        voice.append([midi, frames])


def _hold(voice: Voice, frames: int) -> None:
    """Prolong the voice's last note or rest (a rest when it has none)."""
    if voice:
        voice[-1][1] += frames
    else:
        voice.append([None, frames])


def decode(tokens: Any, encoding: str = "grid") -> stream.Score:
    """A music21 Score (parts Soprano, Alto, Tenor, Bass) of one chorale's tokens, e.g. a
    generated sample. It reads from after a leading START up to the next START.

    Tolerant of what a model may generate: in ``grid`` a trailing partial frame is dropped, a
    HOLD with nothing before it and any token that is not a pitch, REST or HOLD read as REST;
    in ``events`` tokens that do not form a ``VOICE (PITCH | REST | HOLD) DURATION`` triple are
    skipped, and each voice's events follow one another whatever the order between voices."""
    check_encoding(encoding)
    vocabulary = MusicVocabulary(encoding)
    body = [int(t) for t in np.asarray(tokens).reshape(-1)]
    if body and body[0] == START:
        body = body[1:]
    if START in body:
        body = body[: body.index(START)]
    voices: list[Voice] = [[] for _ in VOICES]
    pitch = lambda token: token - vocabulary.first_pitch + LOWEST_PITCH  # noqa: E731
    if encoding == "grid":
        for frame in range(len(body) // len(VOICES)):
            for v, token in enumerate(body[frame * len(VOICES) : (frame + 1) * len(VOICES)]):
                if vocabulary.is_pitch(token):
                    _sound(voices[v], pitch(token), 1)
                elif token == HOLD:
                    _hold(voices[v], 1)
                else:
                    _sound(voices[v], None, 1)
    else:
        i = 0
        while i + 2 < len(body):
            marker, token, length = body[i : i + 3]
            sound = token in (REST, HOLD) or vocabulary.is_pitch(token)
            if not (vocabulary.is_voice(marker) and sound and vocabulary.is_duration(length)):
                i += 1
                continue
            voice, frames = voices[marker - FIRST_VOICE], length - vocabulary.first_duration + 1
            if token == HOLD:
                _hold(voice, frames)
            else:
                _sound(voice, None if token == REST else pitch(token), frames)
            i += 3
    return _score(voices)


def _score(voices: list[Voice]) -> stream.Score:
    from music21 import note, stream

    score = stream.Score()
    for name, voice in zip(VOICES, voices, strict=True):
        part = stream.Part(id=name)
        part.partName = name
        for midi, frames in voice:
            element = note.Rest() if midi is None else note.Note(midi=midi)
            element.quarterLength = frames / FRAMES_PER_QUARTER
            part.append(element)
        score.insert(0, part)
    return score


# ---------------------------------------------------------------------------- the corpus


@dataclass
class Chorales:
    """Quantised chorales: `names` (file stems, e.g. ``bwv269``) and per chorale its
    `pitches` and `onsets` frames (`chorale_frames`)."""

    names: list[str]
    pitches: list[np.ndarray]
    onsets: list[np.ndarray]


def _music21() -> Any:
    try:
        import music21
    except ImportError:
        raise ConfigError(
            "music: the chorales need music21 (pip install 'seqlab[music]')"
        ) from None
    return music21


@functools.cache
def chorale_paths() -> tuple[Path, ...]:
    """music21's Riemenschneider chorales in its order, each file once (where a name matches
    several files, the one named exactly, MusicXML before Humdrum)."""
    music21 = _music21()
    from music21.corpus import chorales

    paths: list[Path] = []
    for name in chorales.Iterator(returnType="filename"):
        found = music21.corpus.getWork(name)
        candidates = [Path(p) for p in (found if isinstance(found, list) else [found])]
        stem = name.rsplit("/", 1)[-1]
        exact = [p for p in candidates if p.stem == stem and p.suffix in SCORE_SUFFIXES]
        path = min(exact, key=lambda p: SCORE_SUFFIXES.index(p.suffix)) if exact else candidates[0]
        if path not in paths:
            paths.append(path)
    return tuple(paths)


def parse_chorale(path: Path) -> stream.Score:
    """A chorale file parsed by music21 (no pickle written beside music21's scratch files)."""
    from music21 import converter

    return converter.parse(path, forceSource=True, storePickle=False)


def load_chorales(max_chorales: int | None = None, cache_dir: str | Path | None = None) -> Chorales:
    """The four-part chorales (the first `max_chorales`, or all), quantised, from the cache
    or parsed into it."""
    music21 = _music21()
    paths = chorale_paths()
    identity = {
        "music21": music21.__version__,
        "files": [[path.name, path.stat().st_size] for path in paths],
        "max_chorales": max_chorales,
        "recipe": RECIPE,
    }
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache_root(cache_dir) / "music" / f"chorales-{digest}"
    chorales = _read_entry(entry)
    if chorales is None:
        with build_lock(entry):
            chorales = _read_entry(entry)
            if chorales is None:
                chorales = _build_entry(entry, paths, max_chorales)
    return chorales


def _build_entry(entry: Path, paths: tuple[Path, ...], max_chorales: int | None) -> Chorales:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / META_FILE).unlink(missing_ok=True)
    log.info("music: parsing up to %d chorales into %s", max_chorales or len(paths), entry)
    chorales = Chorales([], [], [])
    for path in paths:
        if max_chorales is not None and len(chorales.names) >= max_chorales:
            break
        score = parse_chorale(path)
        if len(score.parts) != len(VOICES):
            continue
        pitches, onsets = chorale_frames(score)
        chorales.names.append(path.stem)
        chorales.pitches.append(pitches)
        chorales.onsets.append(onsets)
    if not chorales.names:
        raise DataError("music: music21's corpus holds no four-part chorales")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                pitches=np.concatenate(chorales.pitches),
                onsets=np.concatenate(chorales.onsets),
                frames=np.array([len(p) for p in chorales.pitches], dtype=np.int64),
            )

    atomic_replace(entry / CACHE_ARRAYS, write)
    atomic_write_json(entry / META_FILE, {"format": FORMAT_VERSION, "names": chorales.names})
    return chorales


def _read_entry(entry: Path) -> Chorales | None:
    """The cached chorales if the entry is complete and consistent, else None."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
        with np.load(entry / CACHE_ARRAYS, allow_pickle=False) as arrays:
            pitches, onsets, frames = arrays["pitches"], arrays["onsets"], arrays["frames"]
        names = list(meta["names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("format") != FORMAT_VERSION or len(frames) != len(names):
        return None
    if int(frames.sum()) != len(pitches) or pitches.shape != onsets.shape:
        return None
    cuts = np.cumsum(frames)[:-1]
    return Chorales(names, np.split(pitches, cuts), np.split(onsets, cuts))


# ---------------------------------------------------------------------------- the task


@TASKS.register("music")
class MusicTask(Task):
    """Next-element prediction on the Bach chorales of music21 (symbolic music).

    ``encoding``: ``grid`` (sixteenth frames, voices S A T B interleaved; pitch, HOLD or REST)
    or ``events`` (``VOICE PITCH|REST DURATION`` triples in time order); see the module
    docstring. Splits: music21 has no standard split of its chorales (the JSB Chorales split
    of Boulanger-Lewandowski et al. is not in its metadata), so the chorales are shuffled by
    ``split_seed`` and cut into test (the first ``test_fraction``, at least one), validation
    (the next ``validation_fraction``, at least one) and train (the rest). Each split is its
    chorales' tokens, START before each, in corpus order, as one stream; rows are windows of
    ``seq_len + 1`` tokens: training windows at offsets drawn from (seed, split, step),
    evaluation windows contiguous from the start (`seqlab.data.text.TextData`).

    ``transpose: k`` shifts every training row's pitch tokens by one semitone count drawn
    uniformly from -k .. k (seeded by seed and step; 6 reaches all 12 keys), never validation
    or test; HOLD, REST and the other tokens stay. ``max_chorales`` keeps the first N
    four-part chorales (for quick runs and tests). Of the `data` section only ``cache_dir``
    is read (the window length is this task's ``seq_len``).

    Metrics: nll (nats per token, the metric of record, lower is better), accuracy (next
    token) and, for ``grid`` under a left-to-right objective (ar, mtp), ``note_nll``: the nats
    per pitch or REST target, holds left out (AR's `nll` with only those targets scored: each
    new note given the past). Other objectives do not report it: their context holds the
    future's HOLDs, which tell where notes end.
    """

    metric_of_record = "nll"

    def __init__(
        self,
        data: DataConfig,
        encoding: str = "grid",
        seq_len: int = 256,
        transpose: int = 0,
        max_chorales: int | None = None,
        validation_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        self.encoding = check_encoding(encoding)
        check(
            isinstance(seq_len, int) and seq_len >= 1,
            f"music: seq_len must be a positive integer, got {seq_len!r}",
        )
        check(
            isinstance(transpose, int) and 0 <= transpose <= MAX_TRANSPOSE,
            f"music: transpose must be an integer in 0 .. {MAX_TRANSPOSE}, got {transpose!r}",
        )
        check(
            max_chorales is None or (isinstance(max_chorales, int) and max_chorales >= 3),
            f"music: max_chorales must be null or an integer >= 3 (one per split), "
            f"got {max_chorales!r}",
        )
        for name, value in (
            ("validation_fraction", validation_fraction),
            ("test_fraction", test_fraction),
        ):
            check(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"music: {name} must be a number, got {type(value).__name__} {value!r}",
            )
        check(
            0 < validation_fraction < 1
            and 0 < test_fraction < 1
            and validation_fraction + test_fraction < 1,
            "music: need 0 < validation_fraction, test_fraction and their sum < 1, got "
            f"validation_fraction={validation_fraction} test_fraction={test_fraction}",
        )
        self.vocabulary = MusicVocabulary(self.encoding)
        self.vocab_size = self.vocabulary.vocab_size
        self.seq_len = seq_len + 1
        self.transpose = transpose
        self.chorales = load_chorales(max_chorales, data.cache_dir)
        self.split_names = split_chorales(
            self.chorales.names, validation_fraction, test_fraction, split_seed
        )
        index = {name: i for i, name in enumerate(self.chorales.names)}
        streams = {}
        for split in SPLITS:
            rows = [index[name] for name in self.split_names[split]]
            if split == "train" and transpose:
                self._check_transposable(rows)
            streams[split] = np.concatenate(
                [
                    ENCODERS[self.encoding](self.chorales.pitches[i], self.chorales.onsets[i])
                    for i in rows
                ]
            )
        count = len(self.chorales.names)
        corpus = TokenCorpus(
            self.vocabulary,
            streams,
            {split: 0 for split in SPLITS},  # not text: no bytes per token
            f"music21 Bach chorales ({count} four-part, {self.encoding} encoding)",
        )
        self.data = TextData(corpus, seq_len)

    def _check_transposable(self, rows: list[int]) -> None:
        for i in rows:
            sounding = self.chorales.pitches[i][self.chorales.pitches[i] != SILENT]
            if sounding.size and (
                sounding.min() - self.transpose < LOWEST_PITCH
                or sounding.max() + self.transpose > HIGHEST_PITCH
            ):
                raise DataError(
                    f"music: transposing {self.chorales.names[i]} by ±{self.transpose} leaves "
                    f"the range {LOWEST_PITCH} .. {HIGHEST_PITCH}; use a smaller transpose"
                )

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
        if split == "train" and self.transpose:
            rng = np.random.default_rng([seed, TRANSPOSE_STREAM, step])
            shifts = rng.integers(-self.transpose, self.transpose + 1, size=batch_size * world_size)
            shift = torch.from_numpy(shifts[rank * batch_size : (rank + 1) * batch_size])
            rows = torch.where(self.vocabulary.is_pitch(rows), rows + shift[:, None], rows)
        return Batch(rows)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        for rows in self.data.eval_batches(split, batch_size, max_tokens):
            yield Batch(rows)

    @torch.no_grad()
    def evaluate(
        self,
        model: Model,
        objective: Objective,
        *,
        split: str = "validation",
        batch_size: int = 16,
        max_tokens: int | None = None,
    ) -> dict[str, float]:
        metrics = super().evaluate(
            model, objective, split=split, batch_size=batch_size, max_tokens=max_tokens
        )
        metrics.pop("exact_match", None)  # of a whole window: not a musical quantity
        if self.encoding == "grid" and isinstance(objective, Autoregressive):
            notes = NLL(0.0, 0, objective.bound)
            with eval_mode(model):
                for batch in self.eval_batches(split, batch_size, max_tokens):
                    tokens = batch.tokens.to(model.device)
                    scored = self.vocabulary.is_pitch(tokens) | (tokens == REST)
                    notes = notes + objective.nll(model, Batch(tokens, scored))
            metrics["note_nll"] = notes.per_token
        return metrics


def split_chorales(
    names: list[str], validation_fraction: float, test_fraction: float, split_seed: int
) -> dict[str, list[str]]:
    """The chorale names of each split (each in corpus order): a permutation seeded by
    `split_seed` gives test its first ``max(1, round(n·test_fraction))``, validation the next
    ``max(1, round(n·validation_fraction))``, train the rest (at least one)."""
    n = len(names)
    n_test = max(1, round(n * test_fraction))
    n_validation = max(1, round(n * validation_fraction))
    if n - n_test - n_validation < 1:
        raise DataError(f"music: {n} chorale(s) cannot fill train, validation and test")
    order = np.random.default_rng(split_seed).permutation(n)
    cuts = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": order[n_test + n_validation :],
    }
    return {split: [names[i] for i in sorted(cuts[split])] for split in SPLITS}
