"""Sequential recommendation (SASRec, BERT4Rec): the next item of each user's history.

Data: a file of (user, item, timestamp) interactions, either RecBole's atomic format (the
MovieLens-100k `ml-100k.inter` that `scripts/movielens.sh` takes from the `recbole` wheel)
or a CSV/TSV with a header; read here, RecBole is never imported. Ratings are ignored
(implicit feedback, as in both papers).

Split: leave-one-out by time. Each user's interactions are sorted by timestamp (ties keep the
file's order); the last item is the test target, the second to last the validation target,
the rest is training history. A user with fewer than three interactions only trains.

Ranking: the held-out item is ranked among all items (`full_*`) and among itself plus
`negatives` items drawn uniformly without replacement from those the user never interacted
with (`sampled_*`, SASRec's protocol), by the objective's `next_log_probs`: AR's next-item
distribution after the history (SASRec), masked diffusion's at a mask token appended to it
(BERT4Rec's Cloze reading).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from seqlab.data.tasks.base import SPLITS, Task, capped_rows, check_batch_request, eval_slices
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS
from seqlab.sampling.base import eval_mode

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

PAD = 0
FIRST_ITEM = 1
CUTOFF = 10
NEGATIVE_STREAM = 0x5EC_4EC
FORMATS = ("recbole", "csv")
DEFAULT_PATH = "data/ml-100k/ml-100k.inter"

Interaction = tuple[str, str, float]


def read_interactions(
    path: str | Path,
    format: str = "recbole",
    columns: tuple[str, str, str] = ("user_id", "item_id", "timestamp"),
) -> list[Interaction]:
    """The `(user, item, time)` of every data line of `path`, in file order.

    `recbole`: RecBole's atomic file, a tab-separated header of `name:type` fields (e.g.
    `user_id:token  item_id:token  rating:float  timestamp:float`) and tab-separated rows.
    `csv`: a header naming the columns, then rows, tab-separated when the header holds a tab,
    else comma-separated (quoted fields allowed). `columns` names the user, item and time
    columns (a RecBole field's name is the part before its `:`); others are ignored."""
    file = Path(path)
    if format not in FORMATS:
        raise ConfigError(f"seqrec: format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not file.is_file():
        raise DataError(
            f"seqrec: no interaction file at {file} (scripts/movielens.sh writes {DEFAULT_PATH})"
        )
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            first = handle.readline()
            delimiter = "\t" if format == "recbole" or "\t" in first else ","
            quoting = csv.QUOTE_NONE if format == "recbole" else csv.QUOTE_MINIMAL
            header = next(csv.reader([first], delimiter=delimiter, quoting=quoting), [])
            names = [field.strip() for field in header]
            if format == "recbole":
                names = [name.split(":", 1)[0] for name in names]
            missing = [c for c in columns if c not in names]
            if missing:
                raise DataError(
                    f"seqrec: {file} has no column {missing[0]!r} in its header (expected "
                    f"{', '.join(columns)}; found {', '.join(names) or 'none'})"
                )
            where = [names.index(c) for c in columns]
            interactions: list[Interaction] = []
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            for line, row in enumerate(reader, start=2):
                if not row or all(not field.strip() for field in row):
                    continue
                if len(row) <= max(where):
                    raise DataError(
                        f"seqrec: {file} line {line}: expected {len(names)} fields, got {len(row)}"
                    )
                user, item, time = (row[i].strip() for i in where)
                try:
                    stamp = float(time)
                except ValueError:
                    stamp = math.nan
                if not math.isfinite(stamp):
                    raise DataError(
                        f"seqrec: {file} line {line}: timestamp {time!r} is not a finite number"
                    )
                interactions.append((user, item, stamp))
    except UnicodeDecodeError as err:
        raise DataError(
            f"seqrec: {file}: not UTF-8 text ({err.reason}); expected a UTF-8 file (a "
            "byte-order mark is accepted)"
        ) from None
    if not interactions:
        raise DataError(f"seqrec: {file} holds no interactions after its header")
    return interactions


def k_core(interactions: list[Interaction], k: int) -> list[Interaction]:
    """The interactions left after repeatedly dropping users and items with fewer than `k`
    (every user and item left has at least `k`; k <= 1 keeps all)."""
    while True:
        users = Counter(user for user, _, _ in interactions)
        items = Counter(item for _, item, _ in interactions)
        kept = [r for r in interactions if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(interactions):
            return kept
        interactions = kept


def id_order(ids: set[str]) -> list[str]:
    """Ids in numeric order when all are integers, else in string order."""
    if all(i.lstrip("-").isdigit() for i in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def histories(interactions: list[Interaction]) -> dict[str, list[str]]:
    """Each user's items by timestamp, ties in the order of `interactions` (a stable sort)."""
    by_user: dict[str, list[tuple[float, str]]] = {}
    for user, item, time in interactions:
        by_user.setdefault(user, []).append((time, item))
    return {
        user: [item for _, item in sorted(events, key=lambda e: e[0])]
        for user, events in by_user.items()
    }


def left_padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Rows `[n, width]` int64, each right-aligned and PAD-filled on the left."""
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        if len(row):
            out[r, width - len(row) :] = row
    return out


def target_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """The 1-based rank `[B]` of column `target [B]` in each row of `scores [B, C]`: one plus
    the candidates scoring at least as high, ties counted against the target (a model that
    scores all alike ranks it last); a NaN target score ranks last."""
    own = scores.gather(1, target[:, None])
    ranks = (scores >= own).sum(dim=1)
    return torch.where(own[:, 0].isnan(), scores.shape[1], ranks)


def hit_and_ndcg(ranks: Tensor, cutoff: int = CUTOFF) -> tuple[Tensor, Tensor]:
    """Per row HR@cutoff (rank <= cutoff) and NDCG@cutoff (1 / log2(rank + 1) within the
    cutoff, else 0; one relevant item, so the ideal DCG is 1), float64 `[B]`."""
    hit = ranks <= cutoff
    gain = 1.0 / torch.log2(ranks.double() + 1.0)
    return hit.double(), torch.where(hit, gain, 0.0)


@TASKS.register("seqrec")
class SequentialRecommendation(Task):
    """Next-item prediction on user histories, leave-one-out by time (SASRec, BERT4Rec).

    Ids: 0 PAD, items `1 .. n_items` in numeric (else string) order of their ids; a masked
    objective adds its own mask token after them. Preprocessing: users and items with fewer
    than `min_interactions` interactions are dropped repeatedly (k-core; 5 as in both papers,
    0 or 1: off); histories keep their last `max_len` items.

    Rows are left-padded to `seq_len = max_len + 1`. Training: each user's history without its
    last two items (all of it below three), its last `max_len + 1` items, every item scored:
    AR's shifted next-item loss (the first item is predicted from the padding alone, a
    popularity prior), the masked objectives' Cloze loss. Validation and test: the last
    `max_len` items before the target, then the target, the only scored position; a batch
    of those splits draws such rows.

    `evaluate` adds to NLL and accuracy (of the next item) `full_hr10`, `full_ndcg10`
    (the target ranked among all items) and `sampled_hr10`, `sampled_ndcg10` (among itself
    and `negatives` items the user never interacted with, drawn without replacement from a
    generator seeded by the user's index alone: the same for every run and split; fewer
    when fewer exist). Ties count against the target. The full ranking keeps the items of
    the user's history (SASRec's and BERT4Rec's convention); `exclude_history` drops them
    (RecBole's), all but the target itself. Rows are ranked by the objective's
    `next_log_probs` at the end of the context; rows that `max_tokens` leaves out are
    neither ranked nor scored.
    """

    metric_of_record = "full_ndcg10"

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        format: str = "recbole",
        user_column: str = "user_id",
        item_column: str = "item_id",
        time_column: str = "timestamp",
        min_interactions: int = 5,
        max_len: int = 50,
        negatives: int = 100,
        exclude_history: bool = False,
    ) -> None:
        for name, value, low in (
            ("min_interactions", min_interactions, 0),
            ("max_len", max_len, 1),
            ("negatives", negatives, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"seqrec: {name} must be an integer >= {low}, got {value!r}")
        self.max_len, self.negatives = max_len, negatives
        self.exclude_history = exclude_history
        columns = (user_column, item_column, time_column)
        interactions = k_core(read_interactions(path, format, columns), min_interactions)
        if not interactions:
            raise DataError(
                f"seqrec: no interactions of {path} are left after the k-core filter "
                f"(min_interactions={min_interactions})"
            )
        items = id_order({item for _, item, _ in interactions})
        self.item_index = {item: FIRST_ITEM + i for i, item in enumerate(items)}
        self.n_items = len(items)
        self.vocab_size = FIRST_ITEM + self.n_items
        self.seq_len = max_len + 1
        by_user = histories(interactions)
        self.users = id_order(set(by_user))
        self.sequences = [
            np.array([self.item_index[i] for i in by_user[u]], dtype=np.int64) for u in self.users
        ]
        self._build_rows()
        self._negatives: dict[str, Tensor] = {}

    def _build_rows(self) -> None:
        """Per split: tokens and mask `[R, seq_len]`, the row's user and its full history
        before the target."""
        width = self.seq_len
        train = [s[:-2] if len(s) >= 3 else s for s in self.sequences]
        tokens = left_padded([s[-width:] for s in train], width)
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {"train": (tokens, tokens != PAD)}
        self.row_users = {"train": np.arange(len(self.sequences))}
        self.before: dict[str, list[np.ndarray]] = {"train": train}
        for split, cut in (("validation", 2), ("test", 1)):
            users = [u for u, s in enumerate(self.sequences) if len(s) >= 3]
            if not users:
                raise DataError("seqrec: no user has the three interactions a held-out item needs")
            before = [self.sequences[u][:-cut] for u in users]
            targets = [self.sequences[u][len(b)] for u, b in zip(users, before, strict=True)]
            rows = [np.append(b[-self.max_len :], t) for b, t in zip(before, targets, strict=True)]
            tokens = left_padded(rows, width)
            mask = np.zeros_like(tokens, dtype=bool)
            mask[:, -1] = True
            self.rows[split] = (tokens, mask)
            self.row_users[split] = np.array(users, dtype=np.int64)
            self.before[split] = before

    def _tokens(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return self.rows[split]

    def check_objective(self, objective: Objective) -> None:
        super().check_objective(objective)
        if not objective.ranks_next:
            raise ConfigError(
                f"task 'seqrec' ranks items by the objective's next_log_probs, which objective "
                f"{objective.name!r} does not define (use ar, or masked diffusion)"
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
        """Rows of `split` drawn uniformly with replacement from `[seed, split, step]`."""
        tokens, mask = self._tokens(split)
        check_batch_request(step, seed, batch_size, rank, world_size)
        rng = np.random.default_rng([seed, SPLITS.index(split), step])
        picks = rng.integers(0, len(tokens), size=batch_size * world_size)
        picks = picks[rank * batch_size : (rank + 1) * batch_size]
        return Batch(torch.from_numpy(tokens[picks]), torch.from_numpy(mask[picks]))

    def eval_count(self, split: str, max_tokens: int | None) -> int:
        """How many of `split`'s rows (in user order) `max_tokens` allows."""
        rows = len(self._tokens(split)[0])
        return capped_rows(self.name, split, rows, self.seq_len, max_tokens)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        tokens, mask = self._tokens(split)
        for rows in eval_slices(self.eval_count(split, max_tokens), batch_size):
            yield Batch(torch.from_numpy(tokens[rows]), torch.from_numpy(mask[rows]))

    def sampled_negatives(self, split: str) -> Tensor:
        """`[R, negatives]` item ids per evaluation row of `split` (-1 where the user has
        fewer unseen items), drawn from a generator seeded by the user's index alone."""
        if split not in self._negatives:
            every = np.arange(FIRST_ITEM, self.vocab_size)
            out = np.full((len(self.row_users[split]), self.negatives), -1, dtype=np.int64)
            for r, user in enumerate(self.row_users[split]):
                unseen = np.setdiff1d(every, self.sequences[user])
                rng = np.random.default_rng([NEGATIVE_STREAM, int(user)])
                drawn = rng.choice(unseen, size=min(self.negatives, len(unseen)), replace=False)
                out[r, : len(drawn)] = drawn
            self._negatives[split] = torch.from_numpy(out)
        return self._negatives[split]

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
        negatives = self.sampled_negatives(split)
        sums = dict.fromkeys(("full_hr10", "full_ndcg10", "sampled_hr10", "sampled_ndcg10"), 0.0)
        start = 0
        with eval_mode(model):
            for batch in self.eval_batches(split, batch_size, max_tokens):
                rows = batch.tokens.shape[0]
                context, target = batch.tokens[:, :-1], batch.tokens[:, -1]
                log_probs = objective.next_log_probs(model, context.to(model.device))
                scores = log_probs.double().cpu()[:, : self.vocab_size]
                full = scores[:, FIRST_ITEM:].clone()
                if self.exclude_history:
                    seen = torch.zeros_like(full, dtype=torch.bool)
                    for r in range(rows):
                        before = self.before[split][start + r]
                        seen[r, torch.from_numpy(before - FIRST_ITEM)] = True
                    seen[torch.arange(rows), target - FIRST_ITEM] = False
                    full = full.masked_fill(seen, -math.inf)
                hr, ndcg = hit_and_ndcg(target_ranks(full, target - FIRST_ITEM))
                sums["full_hr10"] += float(hr.sum())
                sums["full_ndcg10"] += float(ndcg.sum())
                drawn = negatives[start : start + rows]
                candidates = torch.cat([target[:, None], drawn.clamp(min=0)], dim=1)
                sampled = scores.gather(1, candidates)
                sampled[:, 1:] = sampled[:, 1:].masked_fill(drawn < 0, -math.inf)
                hr, ndcg = hit_and_ndcg(target_ranks(sampled, torch.zeros_like(target)))
                sums["sampled_hr10"] += float(hr.sum())
                sums["sampled_ndcg10"] += float(ndcg.sum())
                start += rows
        metrics.update({key: value / max(start, 1) for key, value in sums.items()})
        return metrics
