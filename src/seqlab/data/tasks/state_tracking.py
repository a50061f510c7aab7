"""State tracking: parity and modular addition (optionally with nested brackets)."""

from __future__ import annotations

import numpy as np

from seqlab.data.tasks.synthetic import (
    Example,
    SyntheticTask,
    check,
    check_curriculum,
    check_lengths,
    linear_curriculum,
    split_lengths,
)
from seqlab.registry import TASKS

EQ, LPAREN, RPAREN, PLUS, MINUS = 1, 2, 3, 4, 5
FIRST_DIGIT = 6
KINDS = ("parity", "mod_add")


@TASKS.register("state_tracking")
class StateTracking(SyntheticTask):
    """Parity / modular addition (with brackets) of a sequence, longer at test.

    Parity and modular arithmetic, trained short and tested long (Grazzi et al.; Delétang
    et al.): ``x_1 .. x_n = y``.

    Ids: 0 PAD, 1 ``=``, 2 ``(``, 3 ``)``, 4 ``+``, 5 ``-``, digits ``d -> 6 + d`` for
    ``d < modulus`` (so ``vocab_size = 6 + modulus``). n is uniform in ``min_len .. max_len``
    (train, validation) or ``max_len + 1 .. test_max_len`` (test; strictly longer).

    * ``kind="parity"``: x is n uniform bits, y their XOR (modulus is 2).
    * ``kind="mod_add"``: x is n uniform digits mod ``modulus`` (default 5), y their sum mod
      ``modulus``.
    * ``brackets=True`` (mod_add only): x is an n-token expression of digits, ``+``, ``-``
      and nested brackets, evaluated left to right mod ``modulus``. Every such expression has
      an odd number of tokens, so n is drawn from the odd lengths of the range. A bracket
      preceded by ``-`` flips the sign of everything inside, which takes a stack to track.

    Length curriculum (off by default): with ``curriculum_steps > 0`` the training split's
    longest length grows linearly from ``curriculum_start`` at step 0 to ``max_len`` at step
    ``curriculum_steps`` (inclusive lengths ``min_len .. current``), then stays there. Only
    training batches follow it; validation and test keep their fixed ranges.

    Only the final y is scored: an interleaved ``x_1 y_1 x_2 y_2 ..`` format would score every
    prefix, but under teacher forcing each y_t is then a function of the two previous tokens
    (``y_t = y_{t-1} + x_t``), which removes the state-tracking problem.

    Examples (scored token in brackets)::

        parity, n=5:          1 0 1 1 0 = [1]        ->  7 6 7 7 6 1 [7]
        mod_add brackets, n=7: 3 - ( 4 + 2 ) = [2]   ->  9 5 2 10 4 8 3 1 [8]
    """

    test_is_longer = True

    def __init__(
        self,
        kind: str = "parity",
        modulus: int | None = None,
        brackets: bool = False,
        min_len: int = 3,
        max_len: int = 40,
        test_max_len: int = 256,
        eval_examples: int = 512,
        curriculum_start: int | None = None,
        curriculum_steps: int = 0,
    ) -> None:
        check(
            kind in KINDS, f"state_tracking: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}"
        )
        if kind == "parity":
            check(
                modulus in (None, 2),
                f"state_tracking: parity is modulo 2, got modulus={modulus!r}",
            )
            check(not brackets, "state_tracking: brackets need kind='mod_add'")
            modulus = 2
        elif modulus is None:
            modulus = 5
        check(
            isinstance(modulus, int) and modulus >= 2,
            f"state_tracking: modulus must be an integer >= 2, got {modulus!r}",
        )
        check_lengths("state_tracking", min_len, max_len, test_max_len)
        self.curriculum = check_curriculum(
            "state_tracking",
            curriculum_start,
            curriculum_steps,
            (min_len, max_len),
            "min_len .. max_len",
        )
        self.kind = kind
        self.modulus = modulus
        self.brackets = bool(brackets)
        self.lengths = (min_len, max_len, test_max_len)
        if self.brackets:
            for split in ("train", "test"):
                low, high = split_lengths(split, *self.lengths)
                check(
                    (low | 1) <= high,
                    f"state_tracking: bracketed expressions have odd lengths; the {split} range "
                    f"{low}..{high} holds none",
                )
            check(
                self.curriculum is None or (min_len | 1) <= self.curriculum[0],
                "state_tracking: bracketed expressions have odd lengths; the curriculum's first "
                f"range {min_len}..{curriculum_start} holds none",
            )
        self.vocab_size = FIRST_DIGIT + modulus
        self.seq_len = test_max_len + 2
        super().__init__(eval_examples=eval_examples)

    def train_max_len(self, step: int) -> int:
        """The longest training length at `step`: `max_len`, or the curriculum's current one."""
        max_len = self.lengths[1]
        if self.curriculum is None:
            return max_len
        return linear_curriculum(self.curriculum[0], max_len, self.curriculum[1], step)

    def curriculum_level(self, step: int) -> int | None:
        """With a curriculum, the longest training length at `step`."""
        return None if self.curriculum is None else self.train_max_len(step)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        low, high = split_lengths(split, *self.lengths)
        if self.level is not None:  # set by `batch` for training rows only
            high = self.level
        if self.brackets:
            low |= 1
            n = low + 2 * int(rng.integers(0, (high - low) // 2 + 1))
            body, answer = self.expression(rng, n)
        else:
            n = int(rng.integers(low, high + 1))
            digits = rng.integers(0, self.modulus, n)
            body, answer = (FIRST_DIGIT + digits).tolist(), int(digits.sum()) % self.modulus
        tokens = np.array([*body, EQ, FIRST_DIGIT + answer], dtype=np.int64)
        scored = np.zeros(len(tokens), dtype=bool)
        scored[-1] = True
        return Example(tokens, scored)

    def expression(self, rng: np.random.Generator, n: int) -> tuple[list[int], int]:
        """A random expression of exactly `n` (odd) tokens and its value mod `modulus`.

        ``E := T (op T)*``, ``T := digit | ( E )``: each term is a digit with probability 1/2
        (always when fewer than 3 tokens remain), else a bracket of odd length drawn
        uniformly from what remains.
        """
        tokens: list[int] = []
        value, sign, remaining = 0, 1, n
        while True:
            if remaining < 3 or rng.random() < 0.5:
                digit = int(rng.integers(0, self.modulus))
                tokens.append(FIRST_DIGIT + digit)
                term, size = digit, 1
            else:
                size = 3 + 2 * int(rng.integers(0, (remaining - 3) // 2 + 1))
                inner, term = self.expression(rng, size - 2)
                tokens += [LPAREN, *inner, RPAREN]
            value += sign * term
            remaining -= size
            if remaining == 0:
                return tokens, value % self.modulus
            sign = 1 if rng.random() < 0.5 else -1
            tokens.append(PLUS if sign == 1 else MINUS)
            remaining -= 1
