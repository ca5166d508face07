"""Worker functions for the public tests of module 08, and a guard that keeps a broken launch from hanging.

The workers live in this importable file, not in the test file: `launch` pickles `fn` by its module and
name, and a fresh worker process imports that module to find it (the test folder is put on `sys.path`,
which worker processes inherit). Each launch in the tests goes through `guarded_launch`: every worker
writes its process id first, so that the test can check that none is left running, and a `launch` that
never returns fails the test after its own timeout plus a grace period instead of hanging the run.
"""

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


# --------------------------------------------------------------------------------------------------
# Workers (run inside the launched processes)


def record_pid_then(pid_dir, fn, *args):
    """Write this process's id into `pid_dir`, then return `fn(*args)`."""
    Path(pid_dir, f"{os.getpid()}.pid").write_text(str(os.getpid()))
    return fn(*args)


def rank_environment():
    """What a worker sees: torchrun's variables and the process group that `launch` initialised."""
    return {
        "env": {name: os.environ.get(name) for name in TORCHRUN_VARIABLES},
        "initialized": dist.is_initialized(),
        "rank": dist.get_rank() if dist.is_initialized() else None,
        "world_size": dist.get_world_size() if dist.is_initialized() else None,
    }


def fail_on_rank(bad_rank, message, others_sleep=60.0):
    """Rank `bad_rank` raises ValueError(message); the others sleep (launch must not wait for them), then return."""
    if dist.get_rank() == bad_rank:
        raise ValueError(message)
    time.sleep(others_sleep)
    return dist.get_rank()


def make_mlp(seed=0):
    """The small MLP of the data-parallel tests, with weights fixed by `seed`."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def sgd_step(model, x, y, lr=0.1):
    """One SGD step on the mean squared error of `model(x)` against `y`."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    torch.nn.functional.mse_loss(model(x), y).backward()
    return optimizer


def data_parallel_step(all_reduce_gradients, shard, x, y, lr=0.1):
    """One step of data parallelism: this rank's shard, gradients averaged over the group, one SGD step."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = make_mlp()
    optimizer = sgd_step(model, shard(x, rank, world_size), shard(y, rank, world_size), lr)
    all_reduce_gradients(model)
    optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------------
# The guard (runs in the test process)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def guarded_launch(launch, fn, world_size, args=(), timeout=30.0, grace=30.0, **kwargs):
    """`launch(fn, world_size, args, timeout=timeout)`, checked: it returns within `timeout + grace`
    seconds and no worker process is left running afterwards (whether it returned or raised)."""
    pid_dir = tempfile.mkdtemp(prefix="llmlab-launch-")
    outcome = {}

    def call():
        try:
            outcome["value"] = launch(record_pid_then, world_size, args=(pid_dir, fn, *args), timeout=timeout, **kwargs)
        except BaseException as error:  # handed to the test thread below
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout + grace)
    pids = [int(p.stem) for p in Path(pid_dir).glob("*.pid")]
    if thread.is_alive():
        _kill(pids)
        raise AssertionError(
            f"launch(..., timeout={timeout}) did not return within {timeout + grace:.0f} s: it must raise TimeoutError "
            "once `timeout` seconds have passed (wait for results with a deadline, then kill the workers)"
        )
    deadline = time.monotonic() + 5.0  # a killed process may take a moment to be reaped
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if _alive(pid)]
    _kill(left)
    if left:
        raise AssertionError(
            f"launch left {len(left)} worker process(es) running after it {'raised' if 'error' in outcome else 'returned'}: "
            "kill and join every worker before returning or raising (use try/finally)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
