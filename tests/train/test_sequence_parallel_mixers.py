"""Every registered mixer under train.sequence_parallel: on 2 CPU processes (gloo, one
launch) it either runs its shard exactly as the single-process forward, or is refused before
step 1 with a one-line ConfigError (`check_supported`, `check_model`); never silently wrong."""

from __future__ import annotations

import torch
import torch.distributed as dist

from seqlab.errors import ConfigError
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import SequenceShard, check_model, check_supported
from tests.train.sp_helpers import random_batch, setup, shard_logits, spawn, tiny_model

# Wrappers a registered mixer takes as an option (a model of them is another case).
WRAPPED = {"gla+memory_cache": ("gla", {"gla": {"memory_cache": {"segment": 4}}})}


def cases() -> dict[str, tuple[str, dict]]:
    return {**{name: (name, {}) for name in MIXERS.names()}, **WRAPPED}


def _every_mixer(rank: int, size: int, refused: dict) -> None:
    setup(rank, size)
    try:
        shard = SequenceShard(dist.group.WORLD, rank, size)
        tokens = random_batch().tokens
        for case, (name, options) in cases().items():
            try:
                check_supported([name])
                model = tiny_model([name], options)
                check_model(model, shard)
            except ConfigError as err:
                assert "\n" not in str(err), case
                if rank == 0:
                    refused[case] = str(err)
                continue
            model.eval()
            with torch.no_grad():
                full, _ = model(tokens[:, :-1])
            logits, (start, end) = shard_logits(model, tokens, shard)
            torch.testing.assert_close(
                logits, full[:, start:end], rtol=1e-8, atol=1e-9, msg=f"{case} sharded forward"
            )
        dist.barrier()  # no rank tears down while another still exchanges
    finally:
        dist.destroy_process_group()


def test_every_registered_mixer_runs_sharded_exactly_or_is_refused_in_one_line():
    refused = torch.multiprocessing.Manager().dict()
    spawn(_every_mixer, 2, refused)
    assert "mom" in refused and "gla+memory_cache" in refused
    assert all(message.startswith("train.sequence_parallel") for message in refused.values())
    assert {"attention", "gla", "mamba", "deltanet"}.isdisjoint(refused)
