"""Module 08: launching distributed training: processes, ranks, a rendezvous, and one collective.

`torchrun --nproc_per_node 2 train.py` starts two fresh Python processes, gives each an environment
(MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE), and the script calls
`torch.distributed.init_process_group`, which meets the other processes at MASTER_ADDR:MASTER_PORT.
Here you write that launcher as a function, then data parallelism by hand on top of it: every rank
takes its shard of the batch, and the gradients are averaged with an all-reduce. Read
docs/08_distributed_launch.md first.

`fn` and its arguments travel to the workers by pickling: `fn` must be a module-level function of a
module the workers can import (not a lambda, not a function defined inside a test), as with
`multiprocessing` and `torch.multiprocessing.spawn`.
"""

import multiprocessing as mp
import os
import pickle
import socket
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from grader import NotImplementedYet


def free_port() -> int:
    """A TCP port that no process listens on right now, for one launch's rendezvous (MASTER_PORT)."""
    raise NotImplementedYet("free_port")


def _worker(fn: Callable, args: tuple, rank: int, world_size: int, port: int, backend: str, conn: Connection) -> None:
    """The body of one worker process: torchrun's environment, the process group, `fn`, the teardown.

    Sends exactly one message on `conn`: `(True, fn's return value)` or `(False, the error as text)`.
    """
    raise NotImplementedYet("_worker")


def launch(fn: Callable, world_size: int, args: tuple = (), backend: str = "gloo", timeout: float = 60.0) -> list:
    """Run `fn(*args)` in `world_size` fresh processes joined in one process group, like torchrun.

    Each worker gets torchrun's environment: MASTER_ADDR, a MASTER_PORT free for this launch only (two
    launches at once must not meet on one port), RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE (one
    machine: the local rank is the rank). `torch.distributed` is initialised from that environment with
    `backend` before `fn` runs, and the process group is destroyed after it returns; then the worker exits.
    Workers are fresh processes, not copies of this one (start method "forkserver" or "spawn", never
    "fork": a fork copies the caller's thread pool without its threads, and hangs in its first parallel
    op once the caller has run one): `fn`, `args` and the return values are pickled.

    Returns:
        the workers' return values, in rank order (whatever order they finish in).

    Raises:
        ValueError: `world_size < 1`.
        RuntimeError: a worker raised (or died): the message names its rank as a word ("rank 1"; any case
            or form such as "Rank 1" or "rank=1" is accepted) and its error; the other workers are killed.
        TimeoutError: not every worker returned within `timeout` seconds (counted from the call);
            every worker is killed.
    No worker process is left running when `launch` returns or raises.
    """
    raise NotImplementedYet("launch")


def all_reduce_gradients(model: nn.Module) -> None:
    """Average every parameter's `.grad` over the process group, in place (data parallelism by hand).

    Each rank computed gradients of the *mean* loss on its own shard; their average is the gradient of
    the mean loss on the whole batch, so the following optimizer step is the same on every rank and
    equals one single-process step on the concatenated batch. Parameters without a gradient are skipped
    (every rank must skip the same ones, or the collectives would not match up).
    """
    raise NotImplementedYet("all_reduce_gradients")


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The rank's contiguous slice of the first dimension of `batch`.

    `batch` `(n, ...)` -> `(n // world_size, ...)`: rank r gets rows `[r * n / world_size, (r + 1) * n /
    world_size)`, so the shards of ranks 0, 1, ... concatenate back to `batch`. `n` not divisible by
    `world_size` -> ValueError (unequal shards would weigh the ranks' mean losses unequally); `rank`
    outside `[0, world_size)` -> ValueError.
    """
    raise NotImplementedYet("shard")
