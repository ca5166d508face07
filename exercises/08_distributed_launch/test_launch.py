"""Public tests of module 08 (launching distributed training). Run: pytest exercises/08_distributed_launch

These start real worker processes (2 ranks, the gloo backend, on CPU), so they take a few seconds each.
The grader's hidden tests check more (hangs, two launches at once, torchrun and accelerate as the
references, a tiny transformers model). Read docs/08_distributed_launch.md.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # worker processes import the workers from this folder
import launch_workers as workers  # noqa: E402

from grader.harness.checks import assert_close, assert_raises, expect  # noqa: E402


def test_shard_gives_contiguous_slices(impl):
    """shard(batch, rank, 2) is the first or second half of the rows; 7 rows over 2 ranks raise ValueError."""
    batch = torch.arange(24.0).reshape(8, 3)
    first, second = impl.shard(batch, 0, 2), impl.shard(batch, 1, 2)
    assert_close(first, batch[:4], what="shard(batch of 8 rows, rank=0, world_size=2)")
    assert_close(second, batch[4:], what="shard(batch of 8 rows, rank=1, world_size=2)")
    assert_raises(ValueError, impl.shard, torch.zeros(7, 3), 0, 2, when="for a batch of 7 rows over 2 ranks")


def test_launch_gives_each_rank_the_torchrun_environment(impl):
    """launch(fn, 2) runs fn in 2 processes with RANK, LOCAL_RANK, WORLD_SIZE, ... set and the group initialised; results in rank order."""
    results = workers.guarded_launch(impl.launch, workers.rank_environment, 2)
    expect(isinstance(results, list) and len(results) == 2, f"launch(fn, 2) should return a list of 2 results, got {results!r}")
    ports = {r["env"]["MASTER_PORT"] for r in results}
    expect(len(ports) == 1, f"the ranks must share one MASTER_PORT to meet, got {ports}")
    for rank, result in enumerate(results):
        env = result["env"]
        missing = [name for name, value in env.items() if value is None]
        expect(not missing, f"rank {rank} has no {missing} in its environment: set every variable torchrun sets")
        expected = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        got = {name: env[name] for name in expected}
        expect(got == expected, f"results[{rank}] saw {got}, expected {expected} (results must come back in rank order)")
        expect(result["initialized"], f"rank {rank}: torch.distributed is not initialised when fn runs")
        expect((result["rank"], result["world_size"]) == (rank, 2), f"rank {rank}: dist.get_rank(), dist.get_world_size() gave {result['rank']}, {result['world_size']}")


def test_a_failing_rank_raises_runtime_error(impl):
    """When rank 1 raises, launch raises RuntimeError naming rank 1 and the original message, without waiting for rank 0."""
    start = time.monotonic()
    try:
        workers.guarded_launch(impl.launch, workers.fail_on_rank, 2, args=(1, "boom from the worker", 30.0), timeout=120.0)
    except NotImplementedError:  # the stub's error (a RuntimeError too): not the one this test expects
        raise
    except RuntimeError as error:
        elapsed = time.monotonic() - start
        expect(elapsed < 25, f"launch took {elapsed:.0f} s to report the failure: it waited for rank 0 (sleeping 30 s); kill the others at once")
        message = str(error)
        expect("rank 1" in message.lower(), f"the RuntimeError should name the rank that failed ('rank 1'), got: {message[:300]}")
        expect("boom from the worker" in message, f"the RuntimeError should carry the worker's message, got: {message[:300]}")
    else:
        raise AssertionError("launch returned although rank 1 raised ValueError: it must raise RuntimeError")


def test_data_parallel_step_equals_one_step_on_the_whole_batch(impl):
    """One SGD step over 2 ranks (shard + all_reduce_gradients) gives the parameters of one step on the whole batch."""
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    results = workers.guarded_launch(impl.launch, workers.data_parallel_step, 2, args=(impl.all_reduce_gradients, impl.shard, x, y))
    model, summed = workers.make_mlp(), workers.make_mlp()
    workers.sgd_step(model, x, y).step()
    workers.sgd_step(summed, x, y, lr=0.2).step()  # summed gradients over 2 ranks = twice the mean gradient
    summed = dict(summed.named_parameters())
    for rank, parameters in enumerate(results):
        for name, expected in model.named_parameters():
            assert_close(
                parameters[name], expected.detach(), what=f"parameter {name} on rank {rank} after one data-parallel step",
                mistakes={"the gradients were summed over the ranks, not averaged: divide by the world size": summed[name].detach()},
            )


def test_launch_rejects_a_world_size_below_one(impl):
    """launch(fn, 0) raises ValueError before starting any process."""
    assert_raises(ValueError, impl.launch, workers.rank_environment, 0, when="for launch(fn, world_size=0)")
