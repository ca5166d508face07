"""Mutants of module 08 (launching distributed training): the mistakes people make when they launch
processes and average gradients by hand. The hidden suite must reject each one."""

from mutation import Mutant

from grader.harness.course import REPO_ROOT

_REFERENCE = (REPO_ROOT / "solutions" / "08_distributed_launch" / "launch.py").read_text()


def _from_to(first: str, stop: str) -> str:
    """The reference's text from `first` up to (not including) `stop`: a whole function or two, replaced at once."""
    start = _REFERENCE.index(first)
    return _REFERENCE[start : _REFERENCE.index(stop, start)]


DIVIDE = "            parameter.grad /= world_size\n"
RETURN_IN_ORDER = "                returned[rank] = value\n"
SHARD_CHECK = """    if size % world_size != 0:
        raise ValueError(f"a batch of {size} rows does not split evenly over {world_size} ranks")
"""
FAILED = """                if not ok:
                    raise RuntimeError(f"rank {rank} failed: {value}")
"""

_SPAWN = """    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed"])
"""

MUTANTS = [
    Mutant("sum_not_mean", "all-reduces the gradients with SUM and forgets to divide by the world size",
           [(DIVIDE, "")]),
    Mutant("local_rank_is_node_index", "mixes up the local rank with the node index (rank // local world size)",
           [("local_rank = rank % local_world_size", "local_rank = rank // local_world_size")]),
    Mutant("rank_from_local_rank_of_node_0", "gives every worker RANK 0 (the local rank of a one-process node)",
           [('"RANK": str(rank),', '"RANK": str(rank // world_size),')]),
    Mutant("fixed_port", "uses torchrun's default port 29500 for every launch: two launches at once collide",
           [("    port = free_port()\n", "    port = 29500\n")]),
    Mutant("exceptions_swallowed", "a worker's exception becomes a None result instead of an error",
           [(FAILED, "                if not ok:\n                    value = None\n")]),
    Mutant("completion_order", "returns the results in the order the workers finish, not in rank order",
           [(RETURN_IN_ORDER, "                returned[len(returned)] = value\n")]),
    Mutant("never_destroyed", "never destroys the process group",
           [("        finally:\n            dist.destroy_process_group()", "        finally:\n            pass")]),
    Mutant("shards_overlap", "gives each rank one row too many, so neighbouring shards overlap",
           [("    return batch[start : start + per_rank]", "    return batch[start : start + per_rank + 1]")]),
    Mutant("last_rows_dropped", "drops the last rows when the batch does not split evenly instead of raising",
           [(SHARD_CHECK, "")]),
    Mutant("no_local_world_size", "does not set LOCAL_WORLD_SIZE",
           [('            "LOCAL_WORLD_SIZE": str(local_world_size),\n', "")]),
    Mutant("no_timeout", "waits for the results without a deadline: a hanging worker hangs the launch",
           [("            for conn in wait(list(waiting), timeout=remaining):", "            for conn in wait(list(waiting)):")]),
    Mutant("waits_for_everyone_after_a_failure", "keeps waiting for the other ranks after one failed, and raises only at the end",
           [(FAILED, "                if not ok:\n                    failure = RuntimeError(f\"rank {rank} failed: {value}\")\n                    continue\n"),
            ("        for worker in workers:  # they exit on their own", "        if 'failure' in locals():\n            raise failure\n        for worker in workers:  # they exit on their own")]),
    Mutant("no_world_size_check", "accepts world_size 0 and returns an empty list",
           [('    if world_size < 1:\n        raise ValueError(f"world_size must be at least 1, got {world_size}")\n', "")]),
    Mutant("fork_copies_the_thread_pool", "forks the workers from the caller (start method \"fork\"): a fork copies the state of "
           "the caller's OpenMP pool but not its threads, so once the caller has run a multi-threaded op the workers' first "
           "matmul waits forever (accelerate's notebook_launcher forks, and says it must run before anything else)",
           [(_SPAWN, '    context = mp.get_context("fork")\n')]),
    Mutant("workers_not_killed_on_error", "raises on a failure without killing the other workers",
           [("            if worker.is_alive():\n                worker.kill()\n            if worker.pid is not None:\n                worker.join()\n",
             "            pass\n")]),
]

# torch.multiprocessing.start_processes, as PyTorch's DDP tutorial uses mp.spawn: _worker(rank, *args) in each
# process; a worker's error comes back as ProcessRaisedException or ProcessExitedException ("process 1 ..."),
# which this launcher words as "Rank 1 failed: ...".
_START_PROCESSES = '''def _worker(rank: int, fn: Callable, args: tuple, world_size: int, port: int, backend: str, results) -> None:
    """Called by torch.multiprocessing.start_processes as _worker(rank, *args) in each process."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size),
                       "RANK": str(rank), "LOCAL_WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    try:
        results.put(pickle.dumps((rank, fn(*args))))  # bytes: no tensor shared with a process about to exit
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world_size: int, args: tuple = (), backend: str = "gloo", timeout: float = 60.0) -> list:
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    import torch.multiprocessing as torch_mp

    deadline = time.monotonic() + timeout
    results = torch_mp.get_context("spawn").SimpleQueue()
    context = torch_mp.start_processes(_worker, args=(fn, args, world_size, free_port(), backend, results),
                                       nprocs=world_size, join=False, start_method="spawn")
    returned = {}
    try:
        while True:
            while not results.empty():
                rank, value = pickle.loads(results.get())
                returned[rank] = value
            try:
                done = context.join(timeout=0.05)  # raises once a process failed, after terminating the others
            except torch_mp.ProcessRaisedException as error:
                raise RuntimeError(f"Rank {error.error_index} failed: {error}") from None
            except torch_mp.ProcessExitedException as error:
                raise RuntimeError(f"Rank {error.error_index} died: {error}") from None
            if done:
                while not results.empty():
                    rank, value = pickle.loads(results.get())
                    returned[rank] = value
                return [returned[rank] for rank in range(world_size)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not all return within {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


'''

# apex's and Megatron-LM's gradient all-reduce: one flat bucket of every gradient, one collective, copied back.
_FLAT_BUCKET = """    grads = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    if not grads:
        return
    bucket = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(bucket)
    bucket /= dist.get_world_size()
    for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(bucket, grads)):
        grad.copy_(synced)
"""

# Horovod's and DDP's overlap: every all-reduce started at once (async_op=True), then each handle waited for.
_ASYNC_HANDLES = """    world_size = dist.get_world_size()
    pending = [(p.grad, dist.all_reduce(p.grad, async_op=True)) for p in model.parameters() if p.grad is not None]
    for grad, handle in pending:
        handle.wait()
        grad.div_(world_size)
"""

_ALL_REDUCE_BODY = _from_to("    world_size = dist.get_world_size()\n    for parameter in model.parameters():", "    ### END SOLUTION")

ALTERNATIVES = [
    Mutant("spawn_start_method", "fresh interpreters with the spawn start method (slower start, same behaviour)",
           [(_SPAWN, '    context = mp.get_context("spawn")\n')]),
    Mutant("torch_multiprocessing_start_processes", "torch.multiprocessing.start_processes (mp.spawn, as in PyTorch's DDP "
           "tutorial), results through a SimpleQueue, errors worded 'Rank 1 failed: ...'",
           [(_from_to("def _worker(", "def all_reduce_gradients("), _START_PROCESSES)]),
    Mutant("flat_bucket_all_reduce", "one flattened bucket of every gradient, one all_reduce, copied back (apex, Megatron-LM)",
           [(_ALL_REDUCE_BODY, _FLAT_BUCKET)]),
    Mutant("async_all_reduce_handles", "every all_reduce started with async_op=True, then each handle waited for (Horovod, DDP)",
           [(_ALL_REDUCE_BODY, _ASYNC_HANDLES)]),
    Mutant("all_reduce_of_pre_divided_gradients", "divides each gradient by the world size first, then all-reduces with SUM",
           [("            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)  # every rank now holds the sum\n" + DIVIDE,
             "            parameter.grad /= world_size\n            dist.all_reduce(parameter.grad)\n")]),
    Mutant("shard_with_chunk", "shards with torch.chunk after the divisibility check",
           [("    per_rank = size // world_size\n    start = rank * per_rank\n    return batch[start : start + per_rank]",
             "    return torch.chunk(batch, world_size, dim=0)[rank]")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "never_destroyed": "a process group left alive when the worker exits changes no result a public test can see; "
                       "the hidden suite checks that the group is destroyed",
    "no_timeout": "only a rank that hangs shows it, and a public test of that waits out a whole timeout with two "
                  "processes; the hidden suite has the time budget for it",
    "fixed_port": "a fixed port only collides when two launches run at the same time; the fast public tests run one "
                  "launch at a time",
    "completion_order": "on a machine at rest the ranks finish in rank order, so results in completion order look right "
                        "to a fast test; telling them apart needs ranks that are slowed on purpose (hidden)",
    "fork_copies_the_thread_pool": "it hangs only after the parent ran a multi-threaded op, and showing it means a launch that waits out a watchdog of several seconds: too slow for the learner's loop; the hidden suite has the time",
}
