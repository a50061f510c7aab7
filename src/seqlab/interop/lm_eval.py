"""lm-evaluation-harness's model type `seqlab`: a saved seqlab model (any backbone, any
paradigm) as an `lm_eval.api.model.LM`.

    python -m seqlab.interop.lm_eval --model seqlab --model_args pretrained=RUN_DIR \\
        --tasks hellaswag [--device cuda] [--batch_size 8]

takes lm_eval's own command line (it imports this module, which registers the model type, then
runs lm_eval's CLI). From Python, import this module and name `model="seqlab"` in
`lm_eval.simple_evaluate`, or pass a `SeqlabLM` instance.

Requests go through the paradigm the model was trained with (its run's `objective`):
- `loglikelihood`: log p(continuation | context) and whether the continuation is the
  model's single-pass best guess. For the `ar` objective the exact sum of the next-token
  log-softmax terms (and greedy = every continuation token is the argmax given the true
  prefix); for any other objective minus its `nll` of the continuation with the context
  unscored, which for the diffusion and insertion objectives is the negative of an upper
  bound (an ELBO, a lower bound on the log-likelihood), with greedy from its `predict`.
- `loglikelihood_rolling`: the document in lm_eval's rolling windows of `max_length` tokens
  (default: the run's `data.seq_len`), each window's new tokens scored given the rest of
  the window, summed: exact for `ar`, a bound where the objective's NLL is one.
- `generate_until`: `seqlab.generate` with `sampler` (default: `greedy` for autoregressive
  objectives, `ancestral` for diffusion, `insertion` for insertion), up to `max_gen_toks`
  tokens, cut at the first `until` string; the task's other generation keywords pass as
  Hugging Face aliases (`do_sample`, `temperature`, ...; `seqlab.sampling.hf_args`).

The tokenizer is `tokenizer=` (`byte`, `bpe`, `hf:PATH`, or a bare PATH of a `tokenizer.json`
file or a folder holding one, read as `hf:PATH`; see `seqlab.data.tokenizers`), else the run's
`data.tokenizer` when it is not `byte`, else the directory's `tokenizer.json` (as `hf:`) if
any, else bytes. The first token is predicted after `prefix_token_id` (default: the document
separator of seqlab's text corpora: an `hf:` tokenizer's end-of-sequence token, else the
tokenizer's encoding of a newline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from seqlab.cli.args import run_config
from seqlab.cli.sample import diffusion_options
from seqlab.data.tokenizers import (
    HF_PREFIX,
    TOKENIZER_FILE,
    HFTokenizer,
    Tokenizer,
    check_tokenizer_name,
    load_tokenizer,
)
from seqlab.errors import ConfigError
from seqlab.io import load
from seqlab.objectives import Batch, Objective, build_objective
from seqlab.objectives.ar import Autoregressive
from seqlab.registry import OBJECTIVES, SAMPLERS
from seqlab.sampling import check_paradigm, generate

DEFAULT_SAMPLERS = {"ar": "greedy", "diffusion": "ancestral", "insertion": "insertion"}


def find_tokenizer(directory: Path, data_tokenizer: str, tokenizer: str | None) -> Tokenizer:
    """The tokenizer of a saved model (see the module docstring for the order)."""
    if tokenizer is not None:
        if tokenizer not in ("byte", "bpe") and not tokenizer.startswith(HF_PREFIX):
            tokenizer = HF_PREFIX + tokenizer  # a bare tokenizer.json file or folder
        check_tokenizer_name(tokenizer)
        # a named hf: tokenizer is read from its PATH, not from the run's own copy
        return load_tokenizer(tokenizer, directory if tokenizer == "bpe" else None)
    if data_tokenizer != "byte":
        return load_tokenizer(data_tokenizer, directory)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(HF_PREFIX + str(directory / TOKENIZER_FILE))
    return load_tokenizer("byte")


def prefix_token(tokenizer: Tokenizer) -> int:
    """The token the first token is predicted after: an `hf:` tokenizer's end-of-sequence
    token, else the last token of a newline (the document separators of seqlab's corpora)."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.eos_id
    newline = tokenizer.encode("\n")
    if not newline:
        raise ConfigError(
            f"tokenizer {tokenizer.name} encodes a newline as no token; pass prefix_token_id="
        )
    return newline[-1]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator at `seed` inside, restored after (the objectives' stochastic
    NLL estimates draw from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@register_model("seqlab")
class SeqlabLM(LM):
    """A saved seqlab model (`pretrained`: a run or `seqlab.save` directory) for lm_eval."""

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        batch_size: int | str = 1,
        tokenizer: str | None = None,
        max_length: int | None = None,
        sampler: str | None = None,
        prefix_token_id: int | None = None,
        seed: int = 0,
        max_batch_size: int | None = None,  # lm_eval passes it; one batch size is used
    ) -> None:
        super().__init__()
        directory = Path(pretrained)
        config = run_config(directory)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load(directory, self._device).eval()
        self.tokenizer = find_tokenizer(directory, config.data.tokenizer, tokenizer)
        options = config.objective.options
        unbound = OBJECTIVES.build(config.objective.name, **options)
        self.data_vocab = self.model.config.vocab_size - unbound.extra_tokens
        if self.tokenizer.vocab_size > self.data_vocab:
            raise ConfigError(
                f"the tokenizer's {self.tokenizer.vocab_size} tokens exceed the model's data "
                f"vocabulary ({self.data_vocab}); pass the model's tokenizer= "
            )
        self.objective: Objective = build_objective(
            config.objective.name, self.data_vocab, **options
        )
        self.exact = type(self.objective) is Autoregressive
        if isinstance(batch_size, str) and not batch_size.isdigit():
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or config.data.seq_len)
        if self.batch_size < 1 or self.max_length < 2:
            raise ConfigError("batch_size must be >= 1 and max_length >= 2")
        paradigm = self.objective.paradigm
        self.sampler = SAMPLERS.get(sampler or DEFAULT_SAMPLERS.get(paradigm, "greedy"))
        check_paradigm(self.sampler, self.objective)
        self.sampler_options = diffusion_options(self.sampler, config, self.data_vocab)
        self.prefix = (
            prefix_token(self.tokenizer) if prefix_token_id is None else int(prefix_token_id)
        )
        self.seed = int(seed)

    # -- log-likelihoods -------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of the context (the prefix token if empty) and of the continuation, split
        from the encoding of the whole text, with the context's trailing spaces moved to the
        continuation (lm_eval's convention)."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix], self.tokenizer.encode(continuation)
        whole = self.tokenizer.encode(context + continuation)
        head = len(self.tokenizer.encode(context))
        return whole[:head], whole[head:]

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) for each (context ids, continuation ids),
        the row cut to its last `max_length + 1` tokens."""
        rows = []
        for context, continuation in pairs:
            tokens = (context + continuation)[-(self.max_length + 1) :]
            rows.append((tokens, min(len(continuation), len(tokens) - 1)))
        if self.exact:
            return [
                result
                for start in range(0, len(rows), self.batch_size)
                for result in self.score_ar(rows[start : start + self.batch_size])
            ]
        return [self.score_objective(tokens, n) for tokens, n in rows]

    def score_ar(self, rows: Sequence[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """Σ log softmax(logits)[target] over each row's last `n` tokens, the rows padded on
        the right (causal: padding is never read by the scored positions)."""
        width = max(len(tokens) for tokens, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=self._device)
        for i, (tokens, _) in enumerate(rows):
            ids[i, : len(tokens)] = torch.tensor(tokens)
        logits, _ = self.model(ids[:, :-1], layout=self.objective.layout)
        log_probs = logits.double().log_softmax(dim=-1)
        results = []
        for i, (tokens, n) in enumerate(rows):
            positions = torch.arange(len(tokens) - 1 - n, len(tokens) - 1, device=self._device)
            targets = ids[i, positions + 1]
            terms = log_probs[i, positions].gather(-1, targets[:, None]).squeeze(-1)
            greedy = bool((log_probs[i, positions].argmax(-1) == targets).all())
            results.append((float(terms.sum()), greedy))
        return results

    def score_objective(self, tokens: list[int], n: int) -> tuple[float, bool]:
        """Minus the objective's NLL of the last `n` tokens given the others (a bound where
        the objective's is), and whether its `predict` gets all of them right."""
        ids = torch.tensor([tokens], dtype=torch.long, device=self._device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, len(tokens) - n :] = True
        batch = Batch(ids, mask)
        with seeded(self.seed), torch.no_grad():
            nll = self.objective.nll(self.model, batch)
            predictions, scored = self.objective.predict(self.model, batch)
        greedy = bool((predictions[scored] == ids[scored]).all())
        return -nll.nats, greedy

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*request.args) for request in requests]
        results = self.score(pairs)
        for request, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args[:1]
            windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    self.tokenizer.encode(text), self.prefix, self.max_length, 1
                )
            ]
            total = sum(logp for logp, _ in self.score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    # -- generation ------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            accepted = self.sampler.parameters()
            if kwargs.get("do_sample") is False and self.objective.paradigm != "ar":
                kwargs.pop("do_sample")  # the non-AR samplers are greedy at temperature 0
            if kwargs.get("temperature") == 0 and "temperature" not in accepted:
                kwargs.pop("temperature")  # greedy samplers are temperature 0 already
            options = {**self.sampler_options, **kwargs}
            if until and "stop_strings" in accepted:
                options.update(stop_strings=until, decode_fn=self.tokenizer.decode)
            prompt = (self.tokenizer.encode(context) or [self.prefix])[
                -max(self.max_length - max_new, 1) :
            ]
            out = generate(
                self.model, [prompt], max_new_tokens=max_new, sampler=self.sampler.name, **options
            )
            new = out.tokens[0, len(prompt) : int(out.lengths[0])].tolist()
            text = self.tokenizer.decode([t for t in new if t < self.tokenizer.vocab_size])
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), text)
            results.append(text)
        return results


def main(argv: Sequence[str] | None = None) -> None:
    """lm_eval's command line with the `seqlab` model type registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
