"""Hidden suite of module 08 (launching distributed training): real worker processes with gloo on CPU
(nccl too where 2 GPUs exist); torchrun and accelerate's launcher are the references for the environment
and for running the same worker; single-process training on the whole batch is the truth of data parallelism.

Run: pytest grader/hidden/08_distributed_launch --impl solutions   (or --impl path/to/submission)

Where the time goes, and why the suite is laid out this way:
- `all_reduce_gradients` and `shard` are not about starting processes: their ranks are forks of the test
  process (`workers.run_ranks`: torch and the test's data already loaded, a rank starts in milliseconds),
  joined by a real TCPStore rendezvous and real gloo collectives.
- `launch` is checked by launches of cheap workers (a few small collectives, no model): its cost is
  starting fresh interpreters. The grader runs a module's tests in one process, as pytest does, so a
  launch's forkserver (torch imported once) serves the later launches; the four environment checks share
  one launch.
- torchrun and `accelerate launch` run once each, started together by one fixture when the module's first
  launch starts; their workers import nothing they do not need, and they run in the background while the
  learner's launches are checked, so the module's last two tests find them done.
Tests are ordered cheap first: in-process checks, forked ranks, the learner's launches, the real launchers.
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # worker processes import the workers from this folder
import launch_hidden_workers as workers  # noqa: E402

from grader.harness.checks import assert_close, assert_raises  # noqa: E402
from grader.harness.loader import load_implementation, module_path  # noqa: E402
from grader.harness.plugin import course_module_of, impl_root  # noqa: E402

BACKENDS = ["gloo"] + (["nccl"] if torch.cuda.device_count() >= 2 and torch.distributed.is_nccl_available() else [])
EXACT_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
TORCHRUN_DEFAULT_PORT = 29500
# Seconds a test that starts the learner's workers may take under `llmlab grade` (whose default is 10 s): the
# first launch of a run, or the first after a failed test, pays a cold start (a fresh interpreter importing torch).
COLD_START = 60
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32, attn_implementation="eager")


def names_rank(message, rank):
    """The message names `rank` as a word, whatever the case: 'rank 1', 'Rank 1', 'rank=1', 'rank: 1'."""
    return re.search(rf"\brank\s*[=:#]?\s*{rank}(?!\d)", message, re.IGNORECASE) is not None


def expect_runtime_error(launched, rank, *fragments):
    """The launch raised RuntimeError (not the stub's NotImplementedError) naming `rank` and holding every fragment."""
    error = launched.error
    if isinstance(error, NotImplementedError) or (error is not None and not isinstance(error, RuntimeError)):
        raise error
    assert error is not None, f"launch returned {launched.value!r} although a worker failed: it must raise RuntimeError"
    message = str(error)
    assert names_rank(message, rank), f"the RuntimeError should name the rank that failed ('rank {rank}'), got: {message[:400]}"
    for fragment in fragments:
        assert fragment in message, f"the RuntimeError should contain {fragment!r}, got: {message[:400]}"
    return message


def seconds_since_the_failure(launched, flag_dir):
    """Seconds from the bad rank's failure (it notes the time in `flag_dir`) to launch's RuntimeError."""
    failed_at = float((flag_dir / "failed_at").read_text())
    return launched.ended - failed_at


def unwrap(results):
    return [r.value if isinstance(r, workers.SlowToPickle) else r for r in results]


def single_process_step(x, y, lr=0.1):
    """The truth: one torch.optim.SGD step of the MLP on the whole batch, in this process."""
    model = workers.make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    workers.mlp_loss(model, x, y).backward()
    optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


@contextlib.contextmanager
def hold_port(port):
    """Listen on `port` on every local address, IPv4 and IPv6 (a store refused the one may bind the other).
    SO_REUSEADDR lets the holder bind over the TIME_WAIT left by earlier connections to the port, and a port
    that a socket listens on stays refused to every other bind without SO_REUSEPORT (which the holder does
    not set). Already taken by another program: just as busy."""
    holders = []
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            holder = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        holders.append(holder)
        try:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            holder.bind((address, port))
            holder.listen()
        except OSError:
            pass  # held by another program, or no such address family here
    try:
        yield
    finally:
        for holder in holders:
            holder.close()


def run_data_parallel(impl, device, fn, world_size, args):
    """Ranks for a data-parallel check: forks of this process on the CPU; the learner's launch for CUDA
    (a CUDA context does not survive a fork)."""
    if device.type == "cpu":
        return workers.run_ranks(fn, world_size, args=args)
    return workers.guarded_launch(impl.launch, fn, world_size, args=args).result()


# ---------------------------------------------------------------------------------------------------
# shard and argument checks (no process started)


@pytest.mark.points(2)
@pytest.mark.parametrize("rows, world_size", [(12, 3), (8, 4), (5, 1), (6, 6)])
def test_shards_are_contiguous_and_cover_the_batch(impl, rows, world_size):
    """The shards of ranks 0..world_size-1 are contiguous, equal in size, and concatenate back to the batch."""
    batch = torch.randn(rows, 3, 2)
    shards = [impl.shard(batch, rank, world_size) for rank in range(world_size)]
    for rank, part in enumerate(shards):
        n = rows // world_size
        assert_close(part, batch[rank * n : (rank + 1) * n], what=f"shard(batch of {rows} rows, rank={rank}, world_size={world_size})")
    assert_close(torch.cat(shards), batch, what="the shards of every rank, concatenated in rank order")


@pytest.mark.points(2)
@pytest.mark.parametrize("rows, world_size", [(7, 2), (10, 3), (2, 3)])
def test_shard_rejects_a_batch_that_does_not_split_evenly(impl, rows, world_size):
    """A batch whose size is not divisible by world_size raises ValueError (no rows dropped, none repeated)."""
    for rank in range(world_size):
        assert_raises(ValueError, impl.shard, torch.zeros(rows, 4), rank, world_size,
                      when=f"for shard(batch of {rows} rows, rank={rank}, world_size={world_size})")


@pytest.mark.points(1)
@pytest.mark.parametrize("world_size", [0, -2])
def test_launch_rejects_a_world_size_below_one(impl, world_size):
    """launch(fn, world_size) with world_size < 1 raises ValueError before starting any process."""
    assert_raises(ValueError, impl.launch, workers.rank_environment, world_size, when=f"for launch(fn, world_size={world_size})")


# ---------------------------------------------------------------------------------------------------
# Data parallelism by hand (ranks forked from this process: these checks are not about start-up)


@pytest.mark.points(2)
@pytest.mark.parametrize("world_size", [3])
def test_all_reduce_gradients_averages(impl, world_size):
    """all_reduce_gradients leaves every rank with the mean of the ranks' gradients (here over 3 ranks)."""
    results = workers.run_ranks(workers.all_reduce_mean_of_ranks, world_size, args=(impl.all_reduce_gradients,))
    mean = sum(range(1, world_size + 1)) / world_size
    for rank, grad in enumerate(results):
        assert_close(grad, torch.full((2, 3), mean), what=f"the gradient on rank {rank} after all_reduce_gradients",
                     mistakes={"the gradients were summed, not averaged: divide by the world size": torch.full((2, 3), mean * world_size)})


@pytest.mark.points(4)
@pytest.mark.parametrize("world_size", [2, 4])
def test_data_parallel_step_equals_a_step_on_the_whole_batch(impl, device, world_size):
    """One SGD step of an MLP over the ranks (shard + all_reduce_gradients) equals one step on the whole batch in one process."""
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    truth, summed = single_process_step(x, y), single_process_step(x, y, lr=0.1 * world_size)
    results = run_data_parallel(impl, device, workers.data_parallel_step, world_size,
                                (impl.all_reduce_gradients, impl.shard, x, y, 0.1, device.type))
    for rank, parameters in enumerate(results):
        for name, expected in truth.items():
            assert_close(parameters[name], expected, what=f"{name} on rank {rank} after one data-parallel step over {world_size} ranks",
                         mistakes={"the gradients were summed over the ranks, not averaged": summed[name]})


# ---------------------------------------------------------------------------------------------------
# The learner's launch. One launch of 2 ranks for four checks: the environment, the group, the order, the teardown


@pytest.fixture(scope="module", params=BACKENDS)
def environment_launch(request, real_launches):
    """One launch of `rank_environment` over 2 ranks, where rank 0 is the last to report. The module's first launch
    also starts the real launchers (`real_launches`): they run in the background while the learner's launches are
    checked, and the module's last two tests, which compare with them, find them done."""
    impl = load_implementation(impl_root(request.config), course_module_of(request.path))  # once for the 4 tests below
    return request.param, workers.guarded_launch(impl.launch, workers.rank_environment, 2, args=(0, 1.0), backend=request.param)


@pytest.mark.points(3)
@pytest.mark.timeout(COLD_START)
def test_each_rank_gets_the_torchrun_variables(environment_launch):
    """Every rank sees MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE with a single node's values."""
    backend, launched = environment_launch
    results = unwrap(launched.result())
    assert isinstance(results, list) and len(results) == 2, f"launch(fn, 2) should return a list of 2 results, got {results!r}"
    seen = sorted(results, key=lambda r: r["rank"] if r["rank"] is not None else -1)
    for rank, result in enumerate(seen):
        env = result["env"]
        missing = [name for name, value in env.items() if value is None]
        assert not missing, f"rank {rank} has no {missing} in its environment: torchrun sets all of {list(env)}"
        expected = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        got = {name: env[name] for name in EXACT_ENV}
        assert got == expected, f"the worker with dist.get_rank() == {rank} saw {got}, expected {expected} (one node: LOCAL_RANK == RANK)"
    assert len({r["env"]["MASTER_ADDR"] for r in results}) == 1 and len({r["env"]["MASTER_PORT"] for r in results}) == 1, (
        "every rank must be given the same MASTER_ADDR and MASTER_PORT"
    )


@pytest.mark.points(2)
@pytest.mark.timeout(COLD_START)
def test_process_group_is_initialised_with_the_backend(environment_launch):
    """fn runs with torch.distributed initialised: rank and world size from the group, the requested backend, a working all_reduce."""
    backend, launched = environment_launch
    for result in unwrap(launched.result()):
        assert result["initialized"], "torch.distributed is not initialised when fn runs: call init_process_group first"
        assert result["world_size"] == 2, f"dist.get_world_size() is {result['world_size']}, expected 2"
        assert result["backend"] == backend, f"the process group uses backend {result['backend']!r}, expected {backend!r}"
        assert result["all_reduced"] == 3.0, f"an all_reduce of rank + 1 over the group gave {result['all_reduced']}, expected 1 + 2 = 3"


@pytest.mark.points(3)
@pytest.mark.timeout(COLD_START)
def test_results_come_back_in_rank_order(environment_launch):
    """The results are in rank order even when rank 0 finishes last."""
    _, launched = environment_launch
    ranks = [r["rank"] for r in unwrap(launched.result())]
    assert ranks == [0, 1], f"launch returned the results of ranks {ranks} in that order: return them in rank order, not in the order they finish"


@pytest.mark.points(2)
@pytest.mark.timeout(COLD_START)
def test_process_group_is_destroyed_before_the_worker_exits(environment_launch):
    """Each worker destroys its process group (destroy_process_group) after fn returns."""
    _, launched = environment_launch
    launched.result()
    states = sorted(launched.exit_states.values())
    assert "initialized" not in states, "a worker exited with its process group still initialised: call dist.destroy_process_group() after fn"


@pytest.mark.points(1)
@pytest.mark.timeout(COLD_START)
def test_a_single_rank_launch(impl):
    """launch(fn, 1) runs one worker with RANK 0 and WORLD_SIZE 1 and returns [its result]."""
    results = unwrap(workers.guarded_launch(impl.launch, workers.rank_environment, 1).result())
    assert len(results) == 1, f"launch(fn, 1) returned {len(results)} results"
    env = results[0]["env"]
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("0", "1", "1"), f"launch(fn, 1) gave the worker {env}"


# ---------------------------------------------------------------------------------------------------
# Failures, and a parent whose thread pool has run


@pytest.mark.points(3)
@pytest.mark.parametrize("world_size, bad_rank", [(2, 1), (3, 0)])
@pytest.mark.timeout(COLD_START)
def test_a_failing_rank_raises_runtime_error(impl, tmp_path, world_size, bad_rank):
    """A worker that raises gives RuntimeError naming its rank and its message, at once (the others are killed)."""
    launched = workers.guarded_launch(impl.launch, workers.fail_on_rank, world_size, args=(bad_rank, "a hidden failure", str(tmp_path)),
                                      timeout=60.0)
    expect_runtime_error(launched, bad_rank, "a hidden failure")
    waited = seconds_since_the_failure(launched, tmp_path)
    assert waited < 10, f"launch took {waited:.0f} s to report the failure: it waited for the other ranks (sleeping 20 s)"


@pytest.mark.points(1)
@pytest.mark.timeout(COLD_START)
def test_a_worker_that_dies_raises_runtime_error(impl, tmp_path):
    """A worker that exits without an exception (os._exit) gives RuntimeError naming its rank, not a hang."""
    launched = workers.guarded_launch(impl.launch, workers.die_on_rank, 2, args=(1, str(tmp_path)), timeout=60.0)
    expect_runtime_error(launched, 1)
    waited = seconds_since_the_failure(launched, tmp_path)
    assert waited < 10, f"launch took {waited:.0f} s to notice that rank 1 died (the others sleep 20 s)"


@pytest.mark.points(2)
@pytest.mark.timeout(90)  # fresh workers' start, then a matmul
def test_workers_are_fresh_after_the_parent_ran_a_multithreaded_op(impl):
    """After this process has run ops on several intra-op threads, launch's workers still run a matmul (fresh processes, not forks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))  # the grader runs tests on one intra-op thread: give the pool two
    try:
        a, x = torch.randn(256, 256), torch.randn(1 << 20)
        float((a @ a).sum()) + float((x * 2).sum())  # the intra-op (OpenMP) pool of this process runs
        launched = workers.guarded_launch(impl.launch, workers.multithreaded_ops, 2, timeout=60.0, grace=10.0)
    finally:
        torch.set_num_threads(threads)
    if isinstance(launched.error, NotImplementedError):
        raise launched.error
    assert launched.error is None, (
        f"launch raised {type(launched.error).__name__} for workers that run a matmul, after this process had run multi-threaded "
        f"ops: {str(launched.error)[:300]}\nA worker forked from this process copies the state of its thread pool but not its "
        "threads, and its first parallel op waits for them forever: start fresh processes (forkserver or spawn), never fork"
    )
    results = launched.result()
    assert len(results) == 2 and all(r["finite"] for r in results), f"the workers returned {results!r}"


# ---------------------------------------------------------------------------------------------------
# Ports: every launch meets its own ranks


@pytest.mark.points(3)
@pytest.mark.timeout(150)  # two launches at once, then one more
def test_two_launches_at_once_do_not_collide(impl):
    """Two launches running at the same time (and then one more) each meet their own ranks: distinct ports."""
    grads = {}

    def run(name, world_size):
        grads[name] = workers.guarded_launch(impl.launch, workers.all_reduce_mean_of_ranks, world_size,
                                             args=(impl.all_reduce_gradients,), timeout=60.0, grace=10.0)

    threads = [threading.Thread(target=run, args=(name, n)) for name, n in (("a", 2), ("b", 3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run("c", 2)
    for name, world_size in (("a", 2), ("b", 3), ("c", 2)):
        assert name in grads, f"launch {name} did not finish (see the errors above)"
        results = grads[name].result()
        mean = sum(range(1, world_size + 1)) / world_size
        for rank, grad in enumerate(results):
            assert_close(grad, torch.full((2, 3), mean), what=f"the averaged gradient of rank {rank} in a launch of {world_size} ranks run beside another")


@pytest.mark.points(2)
@pytest.mark.timeout(90)
def test_a_launch_while_port_29500_is_taken(impl):
    """With torchrun's default port 29500 taken by another program, launch still meets its ranks (on a free port)."""
    with hold_port(TORCHRUN_DEFAULT_PORT):
        launched = workers.guarded_launch(impl.launch, workers.all_reduce_mean_of_ranks, 2, args=(impl.all_reduce_gradients,),
                                          timeout=60.0, grace=10.0)
    if isinstance(launched.error, NotImplementedError):
        raise launched.error
    assert launched.error is None, (
        f"launch raised {type(launched.error).__name__} while port {TORCHRUN_DEFAULT_PORT} was taken by another program: "
        f"{str(launched.error)[:300]}\nGive each launch a free MASTER_PORT (bind port 0, read the port the system chose), never a fixed one"
    )
    for rank, grad in enumerate(launched.result()):
        assert_close(grad, torch.full((2, 3), 1.5), what=f"the averaged gradient of rank {rank}")


# ---------------------------------------------------------------------------------------------------
# A hang (waits out a timeout), a real model (imports transformers)


@pytest.mark.points(3)
@pytest.mark.timeout(40)  # waits out launch's own 1 s timeout after the workers' start, then checks they are gone
def test_a_hanging_worker_times_out(impl):
    """A worker that never returns gives TimeoutError within the timeout, and every worker is killed."""
    timeout = 1.0
    launched = workers.guarded_launch(impl.launch, workers.hang_on_rank, 2, args=(1, 600.0), timeout=timeout, grace=15.0)
    if isinstance(launched.error, NotImplementedError) or not isinstance(launched.error, TimeoutError):
        if launched.error is not None:
            raise launched.error
        raise AssertionError(f"launch returned {launched.value!r} although rank 1 never returned: raise TimeoutError")
    # A launch may only notice its deadline once its workers have started (a cold start takes seconds).
    allowed = max(timeout, launched.started or 0.0) + 8
    assert launched.seconds < allowed, f"TimeoutError came after {launched.seconds:.0f} s, the timeout was {timeout} s"


@pytest.mark.points(3)
@pytest.mark.timeout(COLD_START)
def test_data_parallel_step_of_a_transformers_model(impl, device):
    """One data-parallel step of a tiny LlamaForCausalLM over 2 ranks equals one step on the whole batch."""
    torch.manual_seed(0)
    model = workers.tiny_llama(LLAMA)  # imported and built here: the forked ranks inherit transformers
    state = {name: t.clone() for name, t in model.state_dict().items()}
    input_ids = torch.randint(0, LLAMA["vocab_size"], (4, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    results = run_data_parallel(impl, device, workers.transformer_data_parallel_step, 2,
                                (impl.all_reduce_gradients, impl.shard, LLAMA, state, input_ids, 0.05, device.type))
    for rank, parameters in enumerate(results):
        for name, expected in model.named_parameters():
            assert_close(parameters[name], expected.detach(), what=f"{name} of the tiny Llama on rank {rank} after one data-parallel step")


# ---------------------------------------------------------------------------------------------------
# The real launchers: torchrun and accelerate run the same workers

_TORCHRUN_SCRIPT = """
import json, os
# torchrun's environment is what is compared: this worker needs no torch
with open(os.path.join({out!r}, os.environ["RANK"] + ".json"), "w") as f:
    json.dump({{name: os.environ.get(name) for name in {names!r}}}, f)
"""

_ACCELERATE_SCRIPT = """
import importlib.util, os, sys
sys.path.insert(0, {here!r})
import torch, torch.distributed as dist
from accelerate import PartialState
import launch_hidden_workers as workers
state = PartialState(cpu=True)  # multi-CPU over gloo, initialised from the environment accelerate's launcher set
spec = importlib.util.spec_from_file_location("learner_launch", {impl_file!r})
impl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(impl)
x, y = torch.load({data!r})
parameters = workers.data_parallel_step(impl.all_reduce_gradients, impl.shard, x, y)
torch.save({{"num_processes": state.num_processes, "rank": state.process_index, "parameters": parameters}},
           os.path.join({out!r}, str(state.process_index) + ".pt"))
state.wait_for_everyone()
dist.destroy_process_group()
"""


def _start(command, tmp_path, **env_overrides):
    """Start a real launcher in the background (its output in files: a full pipe would stall it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **env_overrides}
    out = (tmp_path / "launcher.out").open("w")
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT), tmp_path / "launcher.out"


def _finish(started, timeout=240):
    process, output = started
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"{' '.join(map(str, process.args[:6]))} ... failed:\n{output.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def real_launches(request, tmp_path_factory):
    """torchrun and `accelerate launch`, started together in the background (by the module's first launch, see
    `environment_launch`); the two tests below finish one each, so the launchers' starts (each an agent importing
    torch and two workers) overlap each other and the learner's launches in between."""
    folder = tmp_path_factory.mktemp("launchers")
    ran = {}
    # torchrun: its workers write the environment they were given
    ran["torchrun"] = folder / "torchrun"
    ran["torchrun"].mkdir()
    script = ran["torchrun"] / "worker.py"
    script.write_text(_TORCHRUN_SCRIPT.format(out=str(ran["torchrun"]), names=workers.TORCHRUN_VARIABLES))
    started = {"torchrun": _start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                                  ran["torchrun"])}
    # accelerate: its workers run the learner's data-parallel step on this batch
    ran["accelerate"] = folder / "accelerate"
    ran["accelerate"].mkdir()
    batch = torch.randn(8, 6), torch.randn(8, 3)
    torch.save(batch, ran["accelerate"] / "data.pt")
    impl_file = module_path(impl_root(request.config), course_module_of(request.path)).resolve()
    script = ran["accelerate"] / "worker.py"
    script.write_text(_ACCELERATE_SCRIPT.format(here=str(HERE), impl_file=str(impl_file), data=str(ran["accelerate"] / "data.pt"),
                                                out=str(ran["accelerate"])))
    # On a host without GPUs, --multi_gpu is what starts several processes (torchrun inside); --cpu starts one.
    started["accelerate"] = _start([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                    "--main_process_port", str(workers.free_port()), str(script)],
                                   ran["accelerate"], CUDA_VISIBLE_DEVICES="")  # CPU and gloo even on a GPU host
    yield {name: (started[name], ran[name]) for name in started} | {"batch": batch}
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.points(3)
@pytest.mark.timeout(300)  # starts torchrun and accelerate launch: each an agent importing torch and 2 workers
def test_environment_matches_torchrun(impl, real_launches):
    """Each rank's RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE equal those torchrun --nproc_per_node 2 gives."""
    torchrun, folder = real_launches["torchrun"]
    ours = unwrap(workers.guarded_launch(impl.launch, workers.rank_environment, 2).result())  # torchrun's agent imports torch meanwhile
    _finish(torchrun)
    for rank in range(2):
        theirs = json.loads((folder / f"{rank}.json").read_text())
        assert set(theirs) == set(ours[rank]["env"])
        missing = [name for name, value in ours[rank]["env"].items() if value is None and theirs[name] is not None]
        assert not missing, f"torchrun sets {missing} for rank {rank}; your launch does not"
        want = {name: theirs[name] for name in EXACT_ENV}
        got = {name: ours[rank]["env"][name] for name in EXACT_ENV}
        assert got == want, f"results[{rank}] saw {got}; under torchrun, rank {rank} sees {want}"
        assert (ours[rank]["rank"], ours[rank]["world_size"]) == (int(theirs["RANK"]), int(theirs["WORLD_SIZE"]))
        address = ours[rank]["env"]["MASTER_ADDR"]
        assert socket.gethostbyname(address).startswith("127."), f"MASTER_ADDR {address!r} is not this machine (torchrun --standalone uses localhost)"
        assert 0 < int(ours[rank]["env"]["MASTER_PORT"]) < 65536


@pytest.mark.points(3)
@pytest.mark.timeout(300)  # waits for accelerate launch, started with torchrun above (again here in a fresh runner)
def test_the_same_worker_runs_under_accelerate_launch(real_launches):
    """The data-parallel worker, run by `accelerate launch --multi_gpu --num_processes 2` on CPU, gives the single-process step."""
    accelerate, folder = real_launches["accelerate"]
    _finish(accelerate)
    truth = single_process_step(*real_launches["batch"])
    for rank in range(2):
        theirs = torch.load(folder / f"{rank}.pt")
        assert theirs["num_processes"] == 2, f"accelerate ran {theirs['num_processes']} process(es), expected 2"
        assert theirs["rank"] == rank
        for name, expected in truth.items():
            assert_close(theirs["parameters"][name], expected, what=f"{name} on rank {rank} under accelerate launch")
