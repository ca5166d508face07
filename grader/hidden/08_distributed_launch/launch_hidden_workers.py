"""Worker functions of the hidden suite of module 08, the guard that keeps a broken launch from hanging, and
the suite's own launcher for the checks that are not about starting processes.

Importable (the test puts this folder on `sys.path`, which worker processes inherit): `launch` pickles `fn`
by module and name. The same functions run under the learner's `launch`, under `torchrun` and under
`accelerate launch`.
"""

import faulthandler
import math
import multiprocessing.util
import os
import pickle
import select
import signal
import socket
import tempfile
import threading
import time
import traceback
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


def rank_environment(slow_rank=None, delay=1.0):
    """What a worker sees: torchrun's variables, the process group, and the sum over the group of
    `rank + 1` by one real all_reduce. `slow_rank` reports last."""
    initialized = dist.is_initialized()
    rank = dist.get_rank() if initialized else None
    summed = None
    if initialized:
        backend = str(dist.get_backend())
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else torch.device("cpu")
        value = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(value)
        summed = value.item()
    seen = {
        "env": {name: os.environ.get(name) for name in TORCHRUN_VARIABLES},
        "initialized": initialized,
        "rank": rank,
        "world_size": dist.get_world_size() if initialized else None,
        "backend": str(dist.get_backend()) if initialized else None,
        "all_reduced": summed,
    }
    return SlowToPickle(seen, delay if rank == slow_rank else 0.0)


def all_reduce_mean_of_ranks(all_reduce_gradients, linger=0.0):
    """A model whose only gradient is (rank + 1) * ones: after all_reduce_gradients it should hold the mean.
    `linger` seconds of waiting after the rendezvous keep the group (and its port) alive for that long."""
    rank = dist.get_rank()
    time.sleep(linger)
    model = torch.nn.Linear(3, 2, bias=False)
    model.weight.grad = torch.full((2, 3), float(rank + 1))
    all_reduce_gradients(model)
    return model.weight.grad.clone()


def others_are_idle(bad_rank, flag_dir):
    """Return once every rank but `bad_rank` has finished init_process_group and every collective.

    A rank that fails or dies while another is still connecting or inside a collective makes that one fail
    too (gloo: "Connection closed by peer"), and the launch may then, rightly, report that rank first. So
    the other ranks say (a file each in `flag_dir`) that they are past the rendezvous and idle, and the bad
    rank waits for them before it fails: the scenario names one culprit.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    if rank != bad_rank:
        Path(flag_dir, f"{rank}.idle").touch()
        return
    deadline = time.monotonic() + 60.0
    while len(list(Path(flag_dir).glob("*.idle"))) < world_size - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(flag_dir, "failed_at").write_text(repr(time.time()))  # the test measures launch's reaction from here


def fail_on_rank(bad_rank, message, flag_dir, others_sleep=20.0):
    """Rank `bad_rank` raises ValueError(message); the others sleep (launch must not wait for them), then return."""
    others_are_idle(bad_rank, flag_dir)
    if dist.get_rank() == bad_rank:
        raise ValueError(message)
    time.sleep(others_sleep)
    return dist.get_rank()


def die_on_rank(bad_rank, flag_dir, others_sleep=20.0):
    """Rank `bad_rank` exits at once with code 7, without an exception (as if killed); the others sleep."""
    others_are_idle(bad_rank, flag_dir)
    if dist.get_rank() == bad_rank:
        os._exit(7)
    time.sleep(others_sleep)
    return dist.get_rank()


def hang_on_rank(bad_rank, seconds=600.0):
    """Rank `bad_rank` never returns (sleeps `seconds`); the others return their rank."""
    if dist.get_rank() == bad_rank:
        time.sleep(seconds)
    return dist.get_rank()


def multithreaded_ops(seconds=8.0):
    """A matmul and a large elementwise op, which run on torch's intra-op (OpenMP) thread pool.

    A process forked from a parent whose pool has run holds a copy of that pool's state but none of its
    threads: its first parallel op waits for them forever. Such a worker is ended by faulthandler's
    watchdog (a C thread, it needs no GIL) after `seconds`, so the launch reports a dead rank at once.
    """
    watchdog_log = open(os.devnull, "w")  # noqa: SIM115 - where the watchdog writes its traceback
    faulthandler.dump_traceback_later(seconds, exit=True, file=watchdog_log)
    try:
        a = torch.randn(256, 256)
        x = torch.randn(1 << 20)
        total = float((a @ a).sum()) + float((x * 2).sum())
    finally:
        faulthandler.cancel_dump_traceback_later()
        watchdog_log.close()
    return {"threads": torch.get_num_threads(), "finite": math.isfinite(total)}


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


def sgd_step(model, lr):
    """p <- p - lr * grad: torch.optim.SGD's step without momentum, written out so that a worker does not
    import the optimizer machinery (the truth, in the test process, uses torch.optim.SGD itself)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-lr)


def data_parallel_step(all_reduce_gradients, shard, x, y, lr=0.1, device_type="cpu"):
    """One data-parallel SGD step of the MLP on this rank's shard; returns the new parameters (on the CPU)."""
    os.environ["LLMLAB_TEST_DEVICE"] = device_type
    device = _device()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = make_mlp().to(device)
    mlp_loss(model, shard(x, rank, world_size).to(device), shard(y, rank, world_size).to(device)).backward()
    all_reduce_gradients(model)
    sgd_step(model, lr)
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
    rows = shard(input_ids, rank, world_size).to(device)
    model(input_ids=rows, labels=rows).loss.backward()
    all_reduce_gradients(model)
    sgd_step(model, lr)
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------------
# The suite's own launcher, for the checks of all_reduce_gradients and shard (not about process start-up)


def free_port():
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _forked_rank(fn, args, rank, world_size, port, write_fd):
    """The body of one rank forked by `run_ranks`; never returns."""
    try:
        # The fork copied the parent's OpenMP pool state but not its threads: shrink the pool to this
        # thread before any op, or the first parallel op would wait for threads that do not exist.
        torch.set_num_threads(1)
        os.environ.update({"MASTER_ADDR": "localhost", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                           "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size)})
        dist.init_process_group("gloo")  # a real TCPStore rendezvous (env://) and real gloo collectives
        message = (True, fn(*args))
    except BaseException as error:  # noqa: BLE001 - the learner's code, reported to the test
        message = (False, f"{type(error).__name__}: {error}\n{traceback.format_exc()[-1500:]}")
    try:
        payload = pickle.dumps(message)
        with os.fdopen(write_fd, "wb") as pipe:  # the result first: out before any rank may leave
            pipe.write(payload)
        if dist.is_initialized():
            # A rank that exits while another still holds a connection to it can abort that one (gloo's
            # connection thread throws "Connection closed by peer": SIGABRT). Leave together, results out.
            dist.barrier()
            dist.destroy_process_group()
    finally:
        os._exit(0)  # skip the interpreter's teardown (and pytest's, inherited by the fork)


def run_ranks(fn, world_size, args=(), timeout=60.0):
    """`fn(*args)` on `world_size` ranks joined in one gloo group; their return values in rank order.

    The ranks are forks of this process, which has torch, the test's libraries and the test's data loaded:
    a rank starts in milliseconds, where a fresh interpreter takes seconds to import torch. For the checks
    of `all_reduce_gradients` and `shard`, which are not about starting processes (the learner's `launch`
    is checked by its own tests). CPU only: CUDA does not survive a fork.
    """
    port = free_port()
    pids, reads = [], {}
    try:
        for rank in range(world_size):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _forked_rank(fn, args, rank, world_size, port, write_fd)
            os.close(write_fd)
            pids.append(pid)
            reads[read_fd] = rank
        received = {rank: b"" for rank in range(world_size)}
        deadline = time.monotonic() + timeout
        open_fds = set(reads)
        while open_fds:
            remaining = deadline - time.monotonic()
            ready = select.select(list(open_fds), [], [], max(remaining, 0))[0] if remaining > 0 else []
            if not ready:
                silent = sorted(reads[fd] for fd in open_fds)
                raise AssertionError(
                    f"rank(s) {silent} of {world_size} did not finish within {timeout:.0f} s: a collective waits for a rank that "
                    "never joins it (does every rank call all_reduce on the same parameters, in the same order?)"
                )
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if chunk:
                    received[reads[fd]] += chunk
                else:
                    open_fds.discard(fd)
        results = []
        for rank in range(world_size):
            if not received[rank]:
                raise AssertionError(f"rank {rank} of {world_size} died without reporting (see the other ranks' errors)")
            ok, value = pickle.loads(received[rank])
            if not ok:
                raise AssertionError(f"rank {rank} of {world_size} raised {value}")
            results.append(value)
        return results
    finally:
        for fd in reads:
            os.close(fd)
        kill(pids)
        for pid in pids:
            os.waitpid(pid, 0)


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
    """What one guarded launch gave: the value or the error, the seconds it took, when its last worker started
    (seconds after the call; None if none did), when it returned or raised (time.time()), the workers' exit notes."""

    def __init__(self, value, error, seconds, started, ended, exit_states):
        self.value, self.error, self.seconds, self.started, self.ended = value, error, seconds, started, ended
        self.exit_states = exit_states

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
        outcome["ended"] = time.time()

    called = time.time()
    start = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout + grace)
    seconds = time.monotonic() - start
    pid_files = list(Path(pid_dir).glob("*.pid"))
    pids = [int(p.stem) for p in pid_files]
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
    started = max((p.stat().st_mtime - called for p in pid_files), default=None)
    exit_states = {int(p.stem): p.read_text() for p in Path(pid_dir).glob("*.exit")}
    return Launched(outcome.get("value"), outcome.get("error"), seconds, started, outcome["ended"], exit_states)
