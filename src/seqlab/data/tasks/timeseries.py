"""Time-series forecasting on tokenised values (Chronos-style mean scaling and uniform bins).

Data: series shipped inside statsmodels (`statsmodels.datasets`, read offline) and any user
CSV. Each series is split in time: the last `horizon × test_windows` points are forecast in
the test windows, the `horizon × validation_windows` before them in the validation windows,
the rest trains. Every forecast's context holds only points before its origin.

Tokens (Ansari et al., 2024, Chronos): a window is divided by the mean absolute value of its
context (1 when that is 0) and quantised into `num_bins` uniform bins over [−limit, limit]
(values beyond are clipped into the end bins); a token decodes to its bin centre × scale.

Outputs: `bins` predicts the next token (the bins above); `gaussian` and `student_t` keep
the tokens as inputs and predict the next mean-scaled value with a value head
(`seqlab.heads`) beside them, the value also read as an input.

Forecasts: `num_samples` trajectories of `horizon` steps drawn from each window's context,
token by token by the AR sampler (temperature 1, seeded), or value by value from the value
head (inverse-CDF draws, seeded the same way). MASE and sMAPE of the median, the sample CRPS
scaled by the mean |y|, and the same for a seasonal-naive forecast beside them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Normal, StudentT

from seqlab.data.tasks.base import SPLITS, Task, capped_rows, check_batch_request, eval_slices
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS
from seqlab.sampling.ar import Draws
from seqlab.sampling.base import eval_mode
from seqlab.sampling.marked import feed_back

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

PAD = 0
FIRST_BIN = 1
SAMPLE_STREAM = 0x7153_E5
FORECAST_METRICS = ("mase", "smape", "crps")
OUTPUTS = ("bins", "gaussian", "student_t")


def _sunspots() -> np.ndarray:
    from statsmodels.datasets import sunspots

    return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)


def _co2() -> np.ndarray:
    from statsmodels.datasets import co2

    return co2.load_pandas().data["co2"].to_numpy(dtype=np.float64)


def _elnino() -> np.ndarray:
    from statsmodels.datasets import elnino

    frame = elnino.load_pandas().data.sort_values("YEAR")
    return frame.drop(columns="YEAR").to_numpy(dtype=np.float64).reshape(-1)


def _nile() -> np.ndarray:
    from statsmodels.datasets import nile

    return nile.load_pandas().data["volume"].to_numpy(dtype=np.float64)


def _macrodata(column: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from statsmodels.datasets import macrodata

        return macrodata.load_pandas().data[column].to_numpy(dtype=np.float64)

    return load


# name -> (loader, season): yearly series have no season (1), as in GluonTS's convention.
DATASETS: dict[str, tuple[Callable[[], np.ndarray], int]] = {
    "sunspots": (_sunspots, 1),  # yearly mean sunspot number, 1700-2008
    "co2": (_co2, 52),  # weekly Mauna Loa CO2, 1958-2001 (59 gaps interpolated)
    "elnino": (_elnino, 12),  # monthly sea surface temperature, 1950-2010, flattened
    "nile": (_nile, 1),  # yearly Nile flow at Aswan, 1871-1970
    "realgdp": (_macrodata("realgdp"), 4),  # quarterly US real GDP, 1959-2009
    "realcons": (_macrodata("realcons"), 4),
    "cpi": (_macrodata("cpi"), 4),
    "unemp": (_macrodata("unemp"), 4),
}
DEFAULT_SERIES = ("sunspots", "co2", "elnino")


def fill_missing(values: np.ndarray, name: str) -> np.ndarray:
    """`values` with NaN gaps filled by linear interpolation between their neighbours and
    leading/trailing NaNs dropped (a DataError when none is finite)."""
    finite = np.isfinite(values)
    if not finite.any():
        raise DataError(f"timeseries: series {name!r} holds no finite value")
    first, last = np.flatnonzero(finite)[[0, -1]]
    values, finite = values[first : last + 1], finite[first : last + 1]
    index = np.arange(len(values))
    return np.interp(index, index[finite], values[finite])


def read_csv_series(
    path: str | Path, value_column: str = "value", series_column: str | None = None
) -> dict[str, np.ndarray]:
    """The series of a CSV with a header, rows in time order: one series of `value_column`,
    or one per distinct `series_column` id (named `<file stem>/<id>`, in order of first
    appearance). Empty or `nan` values are gaps (`fill_missing`)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"timeseries: no CSV file at {file}")
    columns = [value_column] + ([series_column] if series_column else [])
    found: dict[str, list[float]] = {}
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            names = reader.fieldnames or []
            missing = [c for c in columns if c not in names]
            if missing:
                raise DataError(
                    f"timeseries: {file} has no column {missing[0]!r} in its header (found "
                    f"{', '.join(names) or 'none'})"
                )
            for line, row in enumerate(reader, start=2):
                text = (row[value_column] or "").strip()
                try:
                    value = float(text) if text else math.nan
                except ValueError:
                    raise DataError(
                        f"timeseries: {file} line {line}: {value_column} {text!r} is not a number"
                    ) from None
                key = f"{file.stem}/{row[series_column]}" if series_column else file.stem
                found.setdefault(key, []).append(value)
    except UnicodeDecodeError as err:
        raise DataError(f"timeseries: {file}: not UTF-8 text ({err.reason})") from None
    if not found:
        raise DataError(f"timeseries: {file} holds no rows after its header")
    return {key: fill_missing(np.array(v), key) for key, v in found.items()}


@dataclass(frozen=True)
class Binning:
    """Mean scaling and `num_bins` uniform bins over [−limit, limit]; bin k is token
    FIRST_BIN + k."""

    num_bins: int
    limit: float

    @property
    def width(self) -> float:
        return 2 * self.limit / self.num_bins

    @staticmethod
    def scale(context: np.ndarray) -> np.ndarray:
        """The mean |value| of each context row `[..., C]` -> `[..., 1]` (1 where it is 0)."""
        scale = np.abs(context).mean(axis=-1, keepdims=True)
        return np.where(scale > 0, scale, 1.0)

    def encode(self, values: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Tokens of `values / scale` (int64, same shape), clipped into the end bins."""
        index = np.floor((values / scale + self.limit) / self.width)
        return FIRST_BIN + np.clip(index, 0, self.num_bins - 1).astype(np.int64)

    def decode(self, tokens: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Bin centres × scale of `tokens` (PAD and ids past the bins clipped to the end bins)."""
        index = np.clip(tokens - FIRST_BIN, 0, self.num_bins - 1)
        return (-self.limit + (index + 0.5) * self.width) * scale


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The seasonal-naive forecast `[horizon]`: ŷ_{n+h} = y_{n+h−m·⌈h/m⌉} (the value one or
    more seasons back), m = `season` (1: the last value; m > len(history) falls back to 1)."""
    m = season if season <= len(history) else 1
    steps = np.arange(1, horizon + 1)
    return history[len(history) - 1 + steps - m * np.ceil(steps / m).astype(int)]


def naive_scale(history: np.ndarray, season: int) -> float:
    """The in-sample MAE of the seasonal-naive forecast, mean_t |y_t − y_{t−m}| over the
    history (m falls back to 1 when the history is not longer than m)."""
    m = season if season < len(history) else 1
    return float(np.abs(history[m:] - history[:-m]).mean())


def mase(forecast: np.ndarray, actual: np.ndarray, history: np.ndarray, season: int) -> float:
    """Mean absolute scaled error (Hyndman & Koehler, 2006): mean |ŷ − y| divided by the
    history's in-sample seasonal-naive MAE; NaN when that is 0."""
    scale = naive_scale(history, season)
    return float(np.abs(forecast - actual).mean() / scale) if scale > 0 else math.nan


def smape(forecast: np.ndarray, actual: np.ndarray) -> float:
    """Symmetric MAPE in percent (M4's definition): 200/H Σ |ŷ − y| / (|ŷ| + |y|), a term
    with both zero counting 0."""
    denominator = np.abs(forecast) + np.abs(actual)
    terms = np.divide(
        np.abs(forecast - actual),
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    return float(200.0 * terms.mean())


def sample_crps(samples: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """The CRPS per step `[H]` of the empirical distribution of `samples [S, H]` at `actual
    [H]`: mean_i |X_i − y| − ½ mean_{i,j} |X_i − X_j| (exact for that distribution; a point
    mass gives |x − y|). The pair term from sorted samples: Σ_{i,j} |x_i − x_j| =
    2 Σ_k (2k − S + 1) x_(k), k = 0 .. S − 1."""
    count = samples.shape[0]
    spread = np.abs(samples - actual[None]).mean(axis=0)
    ordered = np.sort(samples, axis=0)
    weights = 2 * np.arange(count) - count + 1
    pairs = 2 * (weights[:, None] * ordered).sum(axis=0) / count**2
    return spread - 0.5 * pairs


@dataclass
class Scores:
    """Forecast metrics summed over windows: MASE and sMAPE are means over windows; CRPS is
    Σ CRPS / Σ |y| per series, then the mean over series."""

    mase: list[float]
    smape: list[float]
    crps: dict[str, list[float]]
    level: dict[str, list[float]]

    @classmethod
    def empty(cls) -> Scores:
        return cls([], [], {}, {})

    def add(
        self, name: str, samples: np.ndarray, actual: np.ndarray, history: np.ndarray, season: int
    ) -> None:
        median = np.median(samples, axis=0)
        self.mase.append(mase(median, actual, history, season))
        self.smape.append(smape(median, actual))
        self.crps.setdefault(name, []).append(float(sample_crps(samples, actual).sum()))
        self.level.setdefault(name, []).append(float(np.abs(actual).sum()))

    def metrics(self, prefix: str = "") -> dict[str, float]:
        finite = [m for m in self.mase if math.isfinite(m)]
        ratios = [
            sum(self.crps[n]) / sum(self.level[n]) if sum(self.level[n]) > 0 else math.nan
            for n in self.crps
        ]
        ratios = [r for r in ratios if math.isfinite(r)]
        return {
            f"{prefix}mase": float(np.mean(finite)) if finite else math.nan,
            f"{prefix}smape": float(np.mean(self.smape)) if self.smape else math.nan,
            f"{prefix}crps": float(np.mean(ratios)) if ratios else math.nan,
        }


@dataclass(frozen=True)
class Window:
    """One forecast: `series` index, the origin (the first forecast point) in it."""

    series: int
    origin: int


def bins_only(num_bins: int) -> Callable[[Tensor, Tensor], Tensor]:
    """A logits processor keeping only the bin tokens (no PAD, no ids past the bins)."""

    def process(input_ids: Tensor, scores: Tensor) -> Tensor:
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[FIRST_BIN : FIRST_BIN + num_bins] = True
        return scores.masked_fill(~keep, -math.inf)

    return process


def draw(distribution: Distribution, u: Tensor) -> Tensor:
    """Inverse-CDF draws `loc + scale · F⁻¹(u)` of a Gaussian or Student-t of batch shape
    `[B, T]` from uniforms `u` broadcast to it (`[B, 1]`), the standard quantile F⁻¹ in
    float64 (u kept inside [2⁻⁵³, 1 − 2⁻⁵³], so every draw is finite)."""
    u = u.double().clamp(2**-53, 1 - 2**-53)
    if isinstance(distribution, Normal):
        quantile = torch.special.ndtri(u)
    elif isinstance(distribution, StudentT):
        from scipy.special import stdtrit

        df = distribution.df.detach().double().cpu().numpy()
        quantile = torch.from_numpy(stdtrit(df, u.cpu().numpy())).to(u.device)
    else:
        raise ConfigError(
            f"timeseries forecasts a continuous output by inverse-CDF draws of a gaussian or "
            f"student_t value head, not a {type(distribution).__name__}"
        )
    return distribution.loc + distribution.scale * quantile.to(distribution.loc)


@TASKS.register("timeseries")
class TimeSeriesForecasting(Task):
    """Forecasting `horizon` points from `context` points of real series, values as tokens.

    Ids: 0 PAD (never in a row; kept so every paradigm finds a padding id), bins
    `1 .. num_bins`. Rows are `context + horizon` tokens, each window scaled by the mean
    |value| of its own context. Training: a series uniformly, then a window start uniformly
    within its training part, from a generator seeded by (seed, split, step); every position
    scored. Validation/test rows: one per forecast window (series in order, then origins in
    time), only the horizon scored (next-token NLL and accuracy, teacher-forced).

    Series: `series` names statsmodels datasets (`DATASETS`: sunspots, co2, elnino, nile,
    realgdp, realcons, cpi, unemp; default sunspots, co2, elnino when no `path`); `path` adds
    the series of a CSV (`value_column`, optional `series_column`). Gaps are filled by linear
    interpolation, leading and trailing gaps dropped (co2 has 59 weekly gaps). `season`
    overrides every series' season (default: the dataset's, 1 for a CSV).

    `evaluate` adds, over the windows that `max_tokens` leaves in: `mase` (of record, lower is
    better), `smape` and `crps` of the model's forecasts, and `naive_mase`, `naive_smape`,
    `naive_crps` of the seasonal-naive forecast (a point forecast: its CRPS is its absolute
    error). MASE divides each window's MAE by the seasonal-naive in-sample MAE of all the
    points before its origin (a window where that is 0 is left out); `crps` is Σ CRPS / Σ |y|
    over a series' windows and steps (the scaled CRPS of Chronos and GIFT-Eval), averaged over
    series. It needs an AR objective (ar, mtp).

    `output` (default `bins`): what the model predicts. `bins` scores the next token as above.
    `gaussian` or `student_t`: the task declares that value head (`value_head_options` shift 0,
    scale 1: the values are already mean-scaled) and batches carry `values`, each window's
    values divided by its context's mean |value| (float32), beside the same bin tokens (still
    an input); no token is scored (`mask` all False) and the value head's NLL is the loss, on
    `value_mask` (training: every position; evaluation: the horizon). Forecasts are ancestral:
    v_{t+1} drawn from the head, its bin token and value fed back. The windows, scaling and
    metrics are those of `bins`, so MASE, sMAPE and CRPS compare across outputs; `nll` is
    nats per forecast point of the density of the mean-scaled value v/scale (a bins model's
    `nll` is nats per bin token; its `nll + log(2·limit/num_bins)` is the same density NLL of
    a piecewise-uniform forecast inside [−limit, limit]). It needs `ar`, which reads values.
    """

    metric_of_record = "mase"

    def __init__(
        self,
        series: list[str] | None = None,
        path: str | None = None,
        value_column: str = "value",
        series_column: str | None = None,
        season: int | None = None,
        context: int = 64,
        horizon: int = 8,
        test_windows: int = 2,
        validation_windows: int = 2,
        num_bins: int = 1024,
        limit: float = 5.0,
        num_samples: int = 100,
        output: str = "bins",
    ) -> None:
        for name, value, low in (
            ("context", context, 1),
            ("horizon", horizon, 1),
            ("test_windows", test_windows, 1),
            ("validation_windows", validation_windows, 1),
            ("num_bins", num_bins, 2),
            ("num_samples", num_samples, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"timeseries: {name} must be an integer >= {low}, got {value!r}")
        if season is not None and (
            isinstance(season, bool) or not isinstance(season, int) or season < 1
        ):
            raise ConfigError(f"timeseries: season must be a positive integer, got {season!r}")
        if (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not 0 < limit < math.inf
        ):
            raise ConfigError(f"timeseries: limit must be a positive finite number, got {limit!r}")
        if output not in OUTPUTS:
            raise ConfigError(
                f"timeseries: output must be one of {', '.join(OUTPUTS)}, got {output!r}"
            )
        if output != "bins":
            self.value_head = output
            self.value_head_options = {"shift": 0.0, "scale": 1.0}
            self.scores_answers = False  # no token is scored
        names = list(DEFAULT_SERIES if series is None and path is None else series or [])
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise ConfigError(
                f"timeseries: unknown series {unknown[0]!r}; known: {', '.join(DATASETS)}"
            )
        self.context, self.horizon, self.num_samples = context, horizon, num_samples
        self.binning = Binning(num_bins, float(limit))
        self.vocab_size = FIRST_BIN + num_bins
        self.seq_len = context + horizon
        loaded = {n: (fill_missing(DATASETS[n][0](), n), DATASETS[n][1]) for n in names}
        if path is not None:
            csv_series = read_csv_series(path, value_column, series_column)
            loaded.update({n: (v, 1) for n, v in csv_series.items()})
        self.names = list(loaded)
        self.values = [loaded[n][0] for n in self.names]
        self.seasons = [season or loaded[n][1] for n in self.names]
        held = horizon * (test_windows + validation_windows)
        for name, values in zip(self.names, self.values, strict=True):
            if len(values) - held < self.seq_len:
                raise DataError(
                    f"timeseries: series {name!r} has {len(values)} points; context + horizon "
                    f"of training plus {held} held out need {held + self.seq_len}"
                )
        self.train_end = [len(v) - held for v in self.values]
        self.windows: dict[str, list[Window]] = {"train": [], "validation": [], "test": []}
        for s, values in enumerate(self.values):
            test_start = len(values) - horizon * test_windows
            for w in range(validation_windows):
                self.windows["validation"].append(Window(s, self.train_end[s] + w * horizon))
            for w in range(test_windows):
                self.windows["test"].append(Window(s, test_start + w * horizon))
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._scaled: dict[str, np.ndarray] = {}
        for split in ("validation", "test"):
            values = np.stack([self.window_values(w) for w in self.windows[split]])
            mask = np.zeros(values.shape, dtype=bool)
            mask[:, self.context :] = True
            tokens, self._scaled[split] = self.encode_windows(values)
            self._rows[split] = tokens, mask

    def encode_windows(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and mean-scaled values (float32) `[..., context + horizon]` of value windows,
        each divided by the mean |value| of its context."""
        scale = Binning.scale(values[..., : self.context])
        return self.binning.encode(values, scale), (values / scale).astype(np.float32)

    def as_batch(self, tokens: np.ndarray, scored: np.ndarray, scaled: np.ndarray) -> Batch:
        """The batch of rows whose `scored` positions are predicted: the tokens (bins) or,
        with a continuous output, the values beside them."""
        tokens, scored = torch.from_numpy(tokens), torch.from_numpy(scored)
        if self.value_head is None:
            return Batch(tokens, scored)
        return Batch(
            tokens, torch.zeros_like(scored), values=torch.from_numpy(scaled), value_mask=scored
        )

    def window_values(self, window: Window) -> np.ndarray:
        """The `context + horizon` values ending at the window's last forecast point."""
        start = window.origin - self.context
        return self.values[window.series][start : window.origin + self.horizon]

    def check_objective(self, objective: Objective) -> None:
        super().check_objective(objective)  # a continuous output: an objective reading values
        if self.value_head is None and not isinstance(objective, Autoregressive):
            raise ConfigError(
                f"task 'timeseries' forecasts by sampling left to right from the context, which "
                f"needs an AR objective (ar, mtp), not {objective.name!r}"
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
        """Training: random windows of the training parts; validation/test: their rows drawn
        uniformly with replacement; both from a generator seeded by (seed, split, step)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        check_batch_request(step, seed, batch_size, rank, world_size)
        rng = np.random.default_rng([seed, SPLITS.index(split), step])
        total = batch_size * world_size
        if split == "train":
            which = rng.integers(0, len(self.values), size=total)
            highs = np.array([self.train_end[s] - self.seq_len + 1 for s in which])
            starts = (rng.random(total) * highs).astype(np.int64)
            rows = slice(rank * batch_size, (rank + 1) * batch_size)
            values = np.stack(
                [
                    self.values[s][t : t + self.seq_len]
                    for s, t in zip(which[rows], starts[rows], strict=True)
                ]
            )
            tokens, scaled = self.encode_windows(values)
            return self.as_batch(tokens, np.ones(tokens.shape, dtype=bool), scaled)
        tokens, mask = self._rows[split]
        picks = rng.integers(0, len(tokens), size=total)[
            rank * batch_size : (rank + 1) * batch_size
        ]
        return self.as_batch(tokens[picks], mask[picks], self._scaled[split][picks])

    def eval_count(self, split: str, max_tokens: int | None) -> int:
        if split not in self._rows:
            raise DataError(f"timeseries evaluates validation or test, not {split!r}")
        rows = len(self._rows[split][0])
        return capped_rows(self.name, split, rows, self.seq_len, max_tokens)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        count = self.eval_count(split, max_tokens)
        tokens, mask = self._rows[split]
        for rows in eval_slices(count, batch_size):
            yield self.as_batch(tokens[rows], mask[rows], self._scaled[split][rows])

    def forecast_samples(
        self, model: Model, windows: Sequence[Window], index: Sequence[int], batch_size: int
    ) -> np.ndarray:
        """`[len(windows), num_samples, horizon]` sampled values: each window's context
        continued `horizon` steps in mean-scaled units (`sample_bins`, or `sample_values` with
        a continuous output), times the window's scale; sample j of evaluation row r seeded by
        (SAMPLE_STREAM, r, j) alone, so batching does not change the draws."""
        count, draws = len(windows), self.num_samples
        contexts = np.stack([self.window_values(w)[: self.context] for w in windows])
        tokens, scaled = self.encode_windows(contexts)
        prompts, values = np.repeat(tokens, draws, axis=0), np.repeat(scaled, draws, axis=0)
        seeds = [
            int(np.random.default_rng([SAMPLE_STREAM, r, j]).integers(2**31))
            for r in index
            for j in range(draws)
        ]
        sample = self.sample_bins if self.value_head is None else self.sample_values
        rows = max(batch_size, 1) * draws
        with eval_mode(model), torch.no_grad():
            out = [
                sample(
                    model, prompts[at : at + rows], values[at : at + rows], seeds[at : at + rows]
                )
                for at in range(0, len(prompts), rows)
            ]
        forecasts = np.concatenate(out).reshape(count, draws, self.horizon)
        return forecasts * Binning.scale(contexts)[:, :, None]

    def sample_bins(
        self, model: Model, tokens: np.ndarray, values: np.ndarray, seeds: list[int]
    ) -> np.ndarray:
        """`[B, horizon]` mean-scaled forecasts from context tokens `[B, context]`: the AR
        sampler's tokens (temperature 1, bins only) decoded to their bin centres."""
        from seqlab.sampling import generate

        generation = generate(
            model,
            torch.from_numpy(tokens).to(model.device),
            max_new_tokens=self.horizon,
            sampler="sample",
            temperature=1.0,
            seed=seeds,
            processors=[bins_only(self.binning.num_bins)],
        )
        return self.binning.decode(generation.tokens[:, self.context :].cpu().numpy(), 1.0)

    def sample_values(
        self, model: Model, tokens: np.ndarray, values: np.ndarray, seeds: list[int]
    ) -> np.ndarray:
        """`[B, horizon]` mean-scaled forecasts drawn ancestrally from the value head
        (`seqlab.sampling.marked.feed_back`): v_{t+1} ~ p(· | x_≤t, v_≤t) by an inverse-CDF
        `draw` from uniforms of each row's seed, then v_{t+1} and its bin token are the next
        input."""
        device = model.device
        uniforms = Draws(seeds, len(seeds), device)

        def pick(logits: Tensor, distribution: Distribution) -> tuple[Tensor, Tensor]:
            value = draw(distribution, uniforms.uniform(1))[:, -1].double()
            token = self.binning.encode(value.cpu().numpy(), 1.0)
            return torch.from_numpy(token).to(device), value

        inputs = torch.from_numpy(tokens).to(device), torch.from_numpy(values).to(device)
        _, drawn = feed_back(model, *inputs, self.horizon, pick)
        return drawn.cpu().numpy()

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
        self.check_objective(objective)
        metrics = super().evaluate(
            model, objective, split=split, batch_size=batch_size, max_tokens=max_tokens
        )
        count = self.eval_count(split, max_tokens)
        windows = self.windows[split][:count]
        samples = self.forecast_samples(model, windows, range(count), batch_size)
        model_scores, naive_scores = Scores.empty(), Scores.empty()
        for window, drawn in zip(windows, samples, strict=True):
            values = self.values[window.series]
            history = values[: window.origin]
            actual = values[window.origin : window.origin + self.horizon]
            name, season = self.names[window.series], self.seasons[window.series]
            model_scores.add(name, drawn, actual, history, season)
            naive = seasonal_naive(history, self.horizon, season)[None]
            naive_scores.add(name, naive, actual, history, season)
        metrics.update(model_scores.metrics())
        metrics.update(naive_scores.metrics("naive_"))
        return metrics
