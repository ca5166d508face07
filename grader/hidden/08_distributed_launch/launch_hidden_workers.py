"""Worker functions of the hidden suite of module 08, and the guard that keeps a broken launch from hanging.

Importable (the test puts this folder on `sys.path`, which worker processes inherit): `launch` pickles `fn`
by module and name. The same functions run under `launch`, `torchrun` and `accelerate launch`.
"""

import multiprocessing.util
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


def _note_exit_state(pid_dir):
    state = "initialized" if dist.is_available() and dist.is_initialized() else "destroyed"
    Path(pid_dir, f"{os.getpid()}.exit").write_text(state)


def record_pid_then(pid_dir, fn, *args):
    """Write this process's id into `pid_dir`, arrange to note at exit whether the process group was
    destroyed, then return `fn(*args)`."""
    Path(pid_dir, f"{os.getpid()}.pid").write_text(str(os.getpid()))
    multiprocessing.util.Finalize(None, _note_exit_state, args=(pid_dir,), exitpriority=0)  # after Process.run
    return fn(*args)


class SlowToPickle:
    """A return value that takes `delay` seconds to pickle: the rank holding it finishes last."""

    def __init__(self, value, delay=0.0):
        self.value, self.delay = value, delay

    def __reduce__(self):
        time.sleep(self.delay)
        return (SlowToPickle, (self.value,))


def rank_environment(slow_rank=None, delay=2.0):
    """What a worker sees: torchrun's variables and the process group. `slow_rank` reports last."""
    rank = dist.get_rank() if dist.is_initialized() else None
    seen = {
        "env": {name: os.environ.get(name) for name in TORCHRUN_VARIABLES},
        "initialized": dist.is_initialized(),
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else None,
        "backend": str(dist.get_backend()) if dist.is_initialized() else None,
    }
    return SlowToPickle(seen, delay if rank == slow_rank else 0.0)


def all_reduce_mean_of_ranks(all_reduce_gradients):
    """A model whose only gradient is (rank + 1) * ones: after all_reduce_gradients it should hold the mean."""
    rank = dist.get_rank()
    model = torch.nn.Linear(3, 2, bias=False)
    model.weight.grad = torch.full((2, 3), float(rank + 1))
    all_reduce_gradients(model)
    return model.weight.grad.clone()


def fail_on_rank(bad_rank, message, others_sleep=60.0):
    """Rank `bad_rank` raises ValueError(message); the others sleep (launch must not wait for them), then return."""
    if dist.get_rank() == bad_rank:
        raise ValueError(message)
    time.sleep(others_sleep)
    return dist.get_rank()


def die_on_rank(bad_rank, others_sleep=60.0):
    """Rank `bad_rank` exits at once with code 7, without an exception (as if killed); the others sleep."""
    if dist.get_rank() == bad_rank:
        os._exit(7)
    time.sleep(others_sleep)
    return dist.get_rank()


def hang_on_rank(bad_rank, seconds=600.0):
    """Rank `bad_rank` never returns (sleeps `seconds`); the others return their rank."""
    if dist.get_rank() == bad_rank:
        time.sleep(seconds)
    return dist.get_rank()


def _device():
    """cuda:LOCAL_RANK when the test asked for CUDA (LLMLAB_DEVICE) and has it, else the CPU."""
    if os.environ.get("LLMLAB_TEST_DEVICE") == "cuda":
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return torch.device("cpu")


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def mlp_loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def data_parallel_step(all_reduce_gradients, shard, x, y, lr=0.1, device_type="cpu"):
    """One data-parallel SGD step of the MLP on this rank's shard; returns the new parameters (on the CPU)."""
    os.environ["LLMLAB_TEST_DEVICE"] = device_type
    device = _device()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = make_mlp().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    mlp_loss(model, shard(x, rank, world_size).to(device), shard(y, rank, world_size).to(device)).backward()
    all_reduce_gradients(model)
    optimizer.step()
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


def tiny_llama(config_kwargs, state_dict=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**config_kwargs))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def transformer_data_parallel_step(all_reduce_gradients, shard, config_kwargs, state_dict, input_ids, lr=0.05, device_type="cpu"):
    """One data-parallel SGD step of a tiny LlamaForCausalLM on this rank's rows of `input_ids`."""
    os.environ["LLMLAB_TEST_DEVICE"] = device_type
    device = _device()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = tiny_llama(config_kwargs, state_dict).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rows = shard(input_ids, rank, world_size).to(device)
    model(input_ids=rows, labels=rows).loss.backward()
    all_reduce_gradients(model)
    optimizer.step()
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------------
# The guard (runs in the test process)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Launched:
    """What one guarded launch gave: the value or the error, the time it took, the workers' exit notes."""

    def __init__(self, value, error, seconds, exit_states):
        self.value, self.error, self.seconds, self.exit_states = value, error, seconds, exit_states

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def guarded_launch(launch, fn, world_size, args=(), timeout=60.0, grace=30.0, **kwargs) -> Launched:
    """`launch(fn, world_size, args, timeout=timeout)`, checked: it returns or raises within `timeout +
    grace` seconds, and no worker process is left running afterwards."""
    pid_dir = tempfile.mkdtemp(prefix="llmlab-launch-")
    outcome = {}

    def call():
        try:
            outcome["value"] = launch(record_pid_then, world_size, args=(pid_dir, fn, *args), timeout=timeout, **kwargs)
        except BaseException as error:
            outcome["error"] = error

    start = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout + grace)
    seconds = time.monotonic() - start
    pids = [int(p.stem) for p in Path(pid_dir).glob("*.pid")]
    if thread.is_alive():
        kill(pids)
        raise AssertionError(
            f"launch(..., timeout={timeout}) neither returned nor raised within {timeout + grace:.0f} s: it must raise "
            "TimeoutError once `timeout` seconds have passed (wait with a deadline, then kill the workers)"
        )
    deadline = time.monotonic() + 5.0  # a killed process may take a moment to be reaped
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if alive(pid)]
    kill(left)
    if left:
        raise AssertionError(
            f"launch left {len(left)} worker process(es) running after it {'raised' if 'error' in outcome else 'returned'}: "
            "kill and join every worker before returning or raising (try/finally)"
        )
    exit_states = {int(p.stem): p.read_text() for p in Path(pid_dir).glob("*.exit")}
    return Launched(outcome.get("value"), outcome.get("error"), seconds, exit_states)
