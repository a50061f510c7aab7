"""Associative recall: Zoology's multi-query associative recall (`mqar`) and `induction` heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seqlab.data.tasks.synthetic import PAD, Example, SyntheticTask, check, repeat_context
from seqlab.registry import TASKS

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective


@TASKS.register("mqar")
class MQAR(SyntheticTask):
    """Multi-query associative recall (Zoology): recall the value of each queried key.

    Multi-query associative recall (Arora, Eyuboglu et al., Zoology).

    Ids: 0 is PAD (and the blank filler when ``random_non_queries`` is off); keys are
    ``1 .. vocab_size//2 - 1``, values ``vocab_size//2 .. vocab_size - 1``. A row holds
    ``seq_len + 1`` tokens (``seq_len`` is the model's input length, as in Zoology): first the
    context, n key-value pairs with distinct keys and distinct values; then the query region,
    split into ``(seq_len + 1 - 2n) // 2`` two-token slots. Every key is queried once, in a
    random order, at n slots drawn without replacement with probability proportional to
    ``slot ** (power_a - 1)`` (slot 1 right after the context: Zoology's power-law gaps). A
    query is the key followed by its value; the value is the only scored token. Other
    positions of the query region hold random tokens from the whole vocabulary
    (``random_non_queries``, Zoology's default) or 0.

    Example (``vocab_size=16, seq_len=15, num_kv_pairs=3, random_non_queries=False``; keys
    1-7, values 8-15; a context of 6 tokens, then 5 query slots of which 3 are used; scored
    tokens in brackets)::

        3 12 7 9 1 14   7 [9]  0 0  3 [12]  0 0  1 [14]

    Each scored token is one query's answer, so ``accuracy`` is the per-query accuracy.
    ``kv_pairs_mix`` trains on a mixture of kv counts (each train/validation example draws
    its count uniformly from the list); ``test`` always uses ``num_kv_pairs``. When an
    evaluated split mixes counts, `evaluate` adds ``accuracy_kv{n}`` per count.

    ``repeat_context`` r (JRT-Prompt, Arora et al., 2024, "Just read twice"): the 2n context
    tokens appear r times before the query region, so a recurrent model reads every pair
    again after it has seen them all; rows grow by (r − 1)·2n tokens, the answers stay the
    only scored tokens, and an example's held-out partition is decided on the context read
    once, so every r evaluates the same questions. With the example above and r = 2::

        3 12 7 9 1 14   3 12 7 9 1 14   7 [9]  0 0  3 [12]  0 0  1 [14]

    ``stacked`` s: a row is s independent instances one after another (each with its own
    pairs, drawn with the same count, its context repeated r times, then its queries), the
    multi-pass form in which a key of an earlier instance may reappear with another value:
    the model must recall from the latest context and overwrite what it stored before. A
    row then holds s · (seq_len + 1 + (r − 1)·2n) tokens; ``accuracy`` pools all instances.
    """

    def __init__(
        self,
        seq_len: int = 64,
        num_kv_pairs: int = 8,
        vocab_size: int = 256,
        power_a: float = 0.01,
        kv_pairs_mix: list[int] | None = None,
        random_non_queries: bool = True,
        repeat_context: int = 1,
        stacked: int = 1,
        eval_examples: int = 512,
    ) -> None:
        check(
            isinstance(vocab_size, int) and vocab_size >= 4,
            f"mqar: vocab_size must be an integer >= 4, got {vocab_size!r}",
        )
        check(
            isinstance(seq_len, int) and seq_len >= 3,
            f"mqar: seq_len must be an integer >= 3, got {seq_len!r}",
        )
        check(power_a > 0, f"mqar: power_a must be positive, got {power_a!r}")
        for option, value in (("repeat_context", repeat_context), ("stacked", stacked)):
            check(
                isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64,
                f"mqar: {option} must be an integer in [1, 64], got {value!r}",
            )
        self.vocab_size = vocab_size
        self.seq_len = seq_len + 1
        self.first_value = vocab_size // 2
        self.num_kv_pairs = num_kv_pairs
        self.train_counts = list(kv_pairs_mix) if kv_pairs_mix else [num_kv_pairs]
        most = min(self.first_value - 1, self.seq_len // 4)
        for count in {*self.train_counts, num_kv_pairs}:
            check(
                isinstance(count, int) and 1 <= count <= most,
                f"mqar: kv-pair counts must be integers in [1, {most}] (vocab_size//2 - 1 "
                f"distinct keys, and (seq_len + 1) // 4 so all queries fit), got {count!r}",
            )
        self.power_a = float(power_a)
        self.random_non_queries = bool(random_non_queries)
        self.repeat_context, self.stacked = repeat_context, stacked
        self.segment_len = self.seq_len
        most_pairs = max(self.train_counts + [num_kv_pairs])
        self.seq_len = stacked * (self.segment_len + (repeat_context - 1) * 2 * most_pairs)
        self._slot_weights: dict[int, np.ndarray] = {}
        super().__init__(eval_examples=eval_examples)

    def slot_weights(self, slots: int) -> np.ndarray:
        """Power-law weights ``slot ** (power_a - 1)`` of the query slots ``1 .. slots``."""
        if slots not in self._slot_weights:
            self._slot_weights[slots] = np.arange(1, slots + 1.0) ** (self.power_a - 1)
        return self._slot_weights[slots]

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        counts = [self.num_kv_pairs] if split == "test" else self.train_counts
        n = counts[int(rng.integers(len(counts)))]
        parts = [self._instance(rng, n) for _ in range(self.stacked)]
        once = np.concatenate([tokens for tokens, _ in parts])
        repeated = [
            repeat_context(tokens, scored, 2 * n, self.repeat_context) for tokens, scored in parts
        ]
        tokens = np.concatenate([tokens for tokens, _ in repeated])
        scored = np.concatenate([scored for _, scored in repeated])
        return Example(tokens, scored, info=n, key=once.tobytes())

    def _instance(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """One instance of n pairs read once: (tokens, scored), ``seq_len + 1`` of each."""
        length = self.segment_len
        keys = 1 + rng.permutation(self.first_value - 1)[:n]
        values = self.first_value + rng.permutation(self.vocab_size - self.first_value)[:n]
        if self.random_non_queries:
            tokens = rng.integers(0, self.vocab_size, length)
        else:
            tokens = np.full(length, PAD, dtype=np.int64)
        tokens[0 : 2 * n : 2] = keys
        tokens[1 : 2 * n : 2] = values
        slots = (length - 2 * n) // 2
        # Weighted sampling without replacement (Efraimidis & Spirakis): the n smallest
        # Exp(1) / weight keys, the same law as drawing slots one by one by weight.
        chosen = np.argsort(rng.exponential(size=slots) / self.slot_weights(slots))[:n]
        order = rng.permutation(n)
        query = 2 * n + 2 * chosen
        tokens[query] = keys[order]
        tokens[query + 1] = values[order]
        scored = np.zeros(length, dtype=bool)
        scored[query + 1] = True
        return tokens, scored

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
        counts = np.asarray(self.eval_set(split).infos[: self.eval_count(split, max_tokens)])
        if len(set(counts.tolist())) > 1:
            result = self.eval_predictions(
                model, objective, split=split, batch_size=batch_size, max_tokens=max_tokens
            )
            hits = ((result.predictions == result.tokens) & result.scored).sum(dim=1).numpy()
            scored = result.scored.sum(dim=1).numpy()
            for count in sorted(set(counts.tolist())):
                rows = counts == count
                metrics[f"accuracy_kv{count}"] = float(hits[rows].sum() / scored[rows].sum())
        return metrics


TRIGGER = 1


@TASKS.register("induction")
class Induction(SyntheticTask):
    """Induction heads: after a repeated trigger, recall the token that followed it.

    Induction heads: a random sequence holds a special trigger once, followed by a target;
    the sequence ends with the trigger again and the target must be recalled.

    Ids: 0 PAD, 1 TRIGGER, alphabet symbols ``2 .. alphabet_size + 1``. A training row holds
    ``seq_len + 1`` tokens (``seq_len`` is the model's input length): uniform random symbols,
    TRIGGER at a uniform position p <= seq_len - 3 followed by the target (a random symbol),
    TRIGGER at position seq_len - 1 and the target at position seq_len, the only scored
    token. Test rows have ``test_seq_len + 1`` tokens (length extrapolation; the task's
    ``seq_len`` covers them, training rows are PAD-padded).

    Example (``seq_len=10``, alphabet 2-5, trigger shown as T, scored token in brackets)::

        4 T 3 2 5 5 4 2 4 T [3]
    """

    test_is_longer = True

    def __init__(
        self,
        seq_len: int = 64,
        test_seq_len: int = 256,
        alphabet_size: int = 16,
        eval_examples: int = 512,
    ) -> None:
        check(
            isinstance(seq_len, int)
            and isinstance(test_seq_len, int)
            and 3 <= seq_len < test_seq_len,
            f"induction: need integers 3 <= seq_len < test_seq_len, got seq_len={seq_len!r} "
            f"test_seq_len={test_seq_len!r}",
        )
        check(
            isinstance(alphabet_size, int) and alphabet_size >= 2,
            f"induction: alphabet_size must be an integer >= 2, got {alphabet_size!r}",
        )
        self.train_len = seq_len
        self.test_len = test_seq_len
        self.alphabet_size = alphabet_size
        self.vocab_size = alphabet_size + 2
        self.seq_len = test_seq_len + 1
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        n = self.test_len if split == "test" else self.train_len
        tokens = 2 + rng.integers(0, self.alphabet_size, n + 1)
        position = int(rng.integers(0, n - 2))
        tokens[position] = TRIGGER
        tokens[n - 1] = TRIGGER
        tokens[n] = tokens[position + 1]
        scored = np.zeros(n + 1, dtype=bool)
        scored[n] = True
        return Example(tokens, scored)
