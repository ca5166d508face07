"""`llmlab grade --scheduler ADDRESS`: grade a class on a Dask cluster, one task per submission.

The judge (the `llmlab grade` process) stays where it is: it collects the hidden tests, reads the
submissions, decides who is already graded, and alone writes every record, the feedback and the gradebook
(atomically, as without a cluster). Only the grading moves: each submission becomes one task that runs
`grade_submission` on a Dask worker, in the same sandbox as a local run (a worker process per submission,
one forked child per test), and returns its `Record`. So resuming, determinism (the seed travels with the
task) and atomic writes are those of a local run.

A cluster is anything `dask.distributed` connects to: one started by hand (`dask scheduler`, then
`dask worker ADDRESS --nworkers 1 --nthreads 1` on each machine), by dask-jobqueue on Slurm or PBS, or by
dask-kubernetes. Every worker needs this course installed at the same version as the judge's: the worker
grades with its own copy of the hidden suites, and a task refuses to run against suites that differ from
those the judge collected (their fingerprint travels with the task).

Dask is imported here only: without `--scheduler`, `llmlab grade` never imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
from collections.abc import Callable

from grader.judge.grade import ExpectedTest, Options, grade_submission
from grader.judge.report import Record
from grader.judge.sandbox import detect_isolation, hidden_suite
from grader.judge.submission import Submission


def suites_fingerprint(options: Options) -> str:
    """A digest of the graded modules' hidden suites (every file, by name and content)."""
    digest = hashlib.sha256()
    for module in options.modules:
        folder = hidden_suite(module)
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(folder.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def grade_task(submission: Submission, expected: list[ExpectedTest], options: Options, fingerprint: str,
               threads: dict[str, int] | None = None) -> Record:
    """What one Dask task runs, on its worker: the submission graded in the sandbox, the record returned.
    `threads`: the Dask threads (tasks at once) of each worker's host, by worker address."""
    mine = suites_fingerprint(options)
    if mine != fingerprint:
        raise RuntimeError(
            f"the hidden suites on this worker ({os.uname().nodename}) differ from the judge's: install the "
            "same version of the course on every worker")
    # The isolation is the worker machine's own (root or not, unshare or not), never the judge's; so are its
    # lanes: the host's cores shared among the tasks its workers run at once. Uids are leased machine-wide, as
    # a local run leases them: several worker processes may share a machine.
    options = dataclasses.replace(options, isolation=detect_isolation(), jobs=_tasks_on_this_host(threads or {}))
    return grade_submission(submission, expected, options)


def _tasks_on_this_host(threads: dict[str, int]) -> int:
    """The tasks this Dask worker's host runs at once (every worker's threads there), 1 outside a worker."""
    from dask.distributed import get_worker

    try:
        return max(1, threads.get(get_worker().address, 1))
    except ValueError:  # not in a worker
        return 1


def grade_on_cluster(address: str, todo: list[Submission], expected: list[ExpectedTest], options: Options,
                     done: Callable[[Record], None]) -> None:
    """Grade `todo` on the Dask cluster at `address`; call `done(record)` here, in the judge, as each finishes.

    A task that fails (its worker lost twice, suites that differ) stops the run with its error, as a local
    run stops; the records already written stay, so running the command again resumes.
    """
    if not todo:  # everyone already graded: no need to reach the cluster
        return
    from dask.distributed import Client, as_completed

    fingerprint = suites_fingerprint(options)
    run = secrets.token_hex(4)  # two judges grading a learner of the same id on one cluster share no task
    with Client(address, set_as_default=False) as client:
        hosts: dict[str, int] = {}
        workers = client.scheduler_info()["workers"]
        for worker in workers.values():
            hosts[worker["host"]] = hosts.get(worker["host"], 0) + worker["nthreads"]
        threads = {address: hosts[worker["host"]] for address, worker in workers.items()}
        futures = [
            # a key per run, never a hash of the arguments: a regrade (--force) is a new task, not a cached result;
            # retries=1: a worker lost mid-task (machine gone) costs one more try elsewhere
            client.submit(grade_task, submission, expected, options, fingerprint, threads, key=f"llmlab-grade-{submission.learner}-{run}",
                          retries=1)
            for submission in todo
        ]
        try:
            for future in as_completed(futures, loop=client.loop):
                done(future.result())
        finally:
            client.cancel(futures)
