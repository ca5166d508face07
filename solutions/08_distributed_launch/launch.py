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


def free_port() -> int:
    """A TCP port that no process listens on right now, for one launch's rendezvous (MASTER_PORT)."""
    ### BEGIN SOLUTION
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))  # port 0: the operating system picks a free port
        return probe.getsockname()[1]
    ### END SOLUTION


def _worker(fn: Callable, args: tuple, rank: int, world_size: int, port: int, backend: str, conn: Connection) -> None:
    """The body of one worker process: torchrun's environment, the process group, `fn`, the teardown.

    Sends exactly one message on `conn`: `(True, fn's return value)` or `(False, the error as text)`.
    """
    ### BEGIN SOLUTION
    local_world_size = world_size  # every process runs on this one machine (one "node")
    local_rank = rank % local_world_size  # index on the node, picks the GPU (rank // local_world_size: the node's index)
    os.environ.update(
        {
            "MASTER_ADDR": "localhost",  # where rank 0 serves the rendezvous store, as with torchrun --standalone
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(local_world_size),
            "LOCAL_RANK": str(local_rank),
        }
    )
    try:
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # one GPU per process, chosen by the local rank
        dist.init_process_group(backend)  # init_method "env://": reads the variables above, meets the others
        message = (True, fn(*args))
    except BaseException as error:  # anything, even SystemExit: the parent raises it
        message = (False, f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    try:
        # Plain pickle, not the Connection's own pickler: torch's multiprocessing pickler would hand tensors
        # over as shared memory owned by this process, which is gone once it exits.
        payload = pickle.dumps(message)
    except Exception as error:
        payload = pickle.dumps((False, f"the return value could not be pickled: {error!r}"))
    conn.send_bytes(payload)  # first the report: it must get out even if the teardown below fails or hangs
    conn.close()
    if dist.is_initialized():
        # Leave together. A rank that exits while another still holds a connection to it can kill that one:
        # gloo's connection thread throws "Connection closed by peer", which aborts the process (SIGABRT).
        # So nobody tears down before every rank has sent its report and reached this barrier.
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()  # close the connections to the other ranks and the store
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    deadline = time.monotonic() + timeout
    # Fresh processes, as torchrun starts them: no copy of this one (its threads, its CUDA context).
    # "forkserver" starts one clean server process that imports torch once, then forks each worker from
    # it: a worker starts in milliseconds instead of paying `import torch` (seconds) like "spawn".
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed"])
    port = free_port()
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]  # (receiving end, sending end) per rank
    workers = [
        context.Process(target=_worker, args=(fn, args, rank, world_size, port, backend, pipes[rank][1]))
        for rank in range(world_size)
    ]
    try:
        for worker in workers:
            worker.start()
        for _, sending_end in pipes:
            sending_end.close()  # only the worker holds it now: a worker that dies closes its pipe (EOF)
        waiting = {pipes[rank][0]: rank for rank in range(world_size)}
        returned: dict[int, Any] = {}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"rank(s) {sorted(waiting.values())} returned nothing within {timeout} s")
            for conn in wait(list(waiting), timeout=remaining):  # the pipes that have a message (or EOF)
                rank = waiting.pop(conn)
                try:
                    ok, value = pickle.loads(conn.recv_bytes())
                except EOFError:
                    raise RuntimeError(f"rank {rank} died before returning (exit code {workers[rank].exitcode})") from None
                if not ok:
                    raise RuntimeError(f"rank {rank} failed: {value}")
                returned[rank] = value
        for worker in workers:  # they exit on their own once their result is out
            worker.join(timeout=max(deadline - time.monotonic(), 5.0))
        return [returned[rank] for rank in range(world_size)]
    finally:
        for worker in workers:  # after an error or a timeout (or a worker that will not exit): no orphans
            if worker.is_alive():
                worker.kill()
            if worker.pid is not None:
                worker.join()
        for receiving_end, _ in pipes:
            receiving_end.close()
    ### END SOLUTION


def all_reduce_gradients(model: nn.Module) -> None:
    """Average every parameter's `.grad` over the process group, in place (data parallelism by hand).

    Each rank computed gradients of the *mean* loss on its own shard; their average is the gradient of
    the mean loss on the whole batch, so the following optimizer step is the same on every rank and
    equals one single-process step on the concatenated batch. Parameters without a gradient are skipped
    (every rank must skip the same ones, or the collectives would not match up).
    """
    ### BEGIN SOLUTION
    world_size = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)  # every rank now holds the sum
            parameter.grad /= world_size
    ### END SOLUTION


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The rank's contiguous slice of the first dimension of `batch`.

    `batch` `(n, ...)` -> `(n // world_size, ...)`: rank r gets rows `[r * n / world_size, (r + 1) * n /
    world_size)`, so the shards of ranks 0, 1, ... concatenate back to `batch`. `n` not divisible by
    `world_size` -> ValueError (unequal shards would weigh the ranks' mean losses unequally); `rank`
    outside `[0, world_size)` -> ValueError.
    """
    ### BEGIN SOLUTION
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} and world_size {world_size}")
    size = batch.shape[0]
    if size % world_size != 0:
        raise ValueError(f"a batch of {size} rows does not split evenly over {world_size} ranks")
    per_rank = size // world_size
    start = rank * per_rank
    return batch[start : start + per_rank]
    ### END SOLUTION
