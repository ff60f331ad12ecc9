"""Where curation's per-video work runs when it is spread past one machine: Ray tasks (`--engine ray`).

The default engine (`local`, in `curate.py`) runs one worker process per core on this machine. With
`engine="ray"` every video is a Ray task (`ray.remote` around the same pure per-video function), so the
videos of one run spread over every node of a Ray cluster. Nothing else changes: the driver (the process
that runs `curate_folder`) still reads and writes the tables, through a temporary file and a rename; the
tasks write the clip files into OUT (temporary file, then rename), so on a cluster OUT and the input
folder must be one shared file system, mounted at the same path on every node.

A task whose worker dies (a crash, the OS or Ray's OOM killer, a lost node) is retried once by Ray
(`max_retries=1`), then its video is recorded as failed with the same reason as under the local engine;
the other videos are not disturbed. At most `IN_FLIGHT_PER_CPU` tasks per cluster CPU are submitted at a
time, so a million videos never sit in Ray's queues (or the driver's memory as task arguments) at once.

`ray` is an optional dependency: `pip install "minisvd[ray]"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

RAY_HINT = 'pip install "minisvd[ray]"'
IN_FLIGHT_PER_CPU = 4  # tasks submitted per cluster CPU: workers keep busy while the driver writes tables
RESOURCES_EVERY_S = 10.0  # how often the cluster's CPU count is read again (an autoscaling cluster grows)


class EngineUnavailable(ValueError):
    """The engine asked for cannot run here (ray not installed, no cluster at the address): one line."""


def import_ray():
    """The `ray` module, or `EngineUnavailable` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise EngineUnavailable(
            f"--engine ray needs the ray package, which is not installed: {RAY_HINT}"
        ) from None
    return ray


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def init_ray(address: str | None, workers: int, **kwargs) -> None:
    """Connect to the Ray cluster at `address`, or start a local Ray with `workers` CPUs (no dashboard)."""
    ray = import_ray()
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # Ray's OOM killer retries a task `task_oom_retries` times, not max_retries: once, too
            ray.init(
                num_cpus=max(1, workers),
                include_dashboard=False,
                _system_config={"task_oom_retries": 1},
                **kwargs,
            )
    except Exception as e:  # noqa: BLE001 - no cluster there, a wrong address: one line for the CLI
        where = f"at {address}" if address else "locally"
        raise EngineUnavailable(f"cannot start or reach Ray {where}: {_first_line(e)}") from None


class RayResults:
    """`run(job)` for every job as a Ray task; iterate for the results as they finish (any order); `close()`.

    Made before the run (so a cluster that cannot be reached is an error before anything is computed), it
    uses the Ray session of this process when there is one (`ray.init` called before, e.g. by a notebook or
    a test); else connects to `address` (`auto`, `ray://head:10001`, `head:6379`), or starts a local Ray
    with `workers` CPUs when `address` is None; `close()` cancels what is still queued and shuts down a Ray
    it started or connected to. A task that fails twice in Ray (its worker died) gives the result
    `failed(job, died)`, any other Ray error `failed(job, "<error>: <first line>")`, so each job gives
    exactly one result.
    """

    def __init__(
        self,
        jobs: list,
        run: Callable,
        failed: Callable[[object, str], object],
        died: str,
        workers: int,
        address: str | None = None,
    ):
        self.ray = ray = import_ray()
        self.jobs, self.failed, self.died, self.workers = jobs, failed, died, workers
        self.running: dict = {}  # ObjectRef -> job
        self.own = bool(jobs) and not ray.is_initialized()  # nothing to do: no Ray to start
        if self.own:
            init_ray(address, workers)
        self.remote = ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)(run)

    def __iter__(self) -> Iterator:
        from ray.exceptions import (
            LocalRayletDiedError,
            NodeDiedError,
            OutOfMemoryError,
            RayError,
            RayTaskError,
            WorkerCrashedError,
        )

        ray, running, pending = self.ray, self.running, iter(self.jobs)
        window, next_look = 0, 0.0
        while True:
            if time.monotonic() >= next_look:
                cpus = int(ray.cluster_resources().get("CPU", 0)) or max(1, self.workers)
                window, next_look = IN_FLIGHT_PER_CPU * cpus, time.monotonic() + RESOURCES_EVERY_S
            while len(running) < window:
                job = next(pending, None)
                if job is None:
                    break
                running[self.remote.remote(job)] = job
            if not running:
                return
            ready, rest = ray.wait(list(running), num_returns=1)
            if rest:  # and whatever else has finished meanwhile
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # `run` raised (it records its own errors, so: unexpected)
                    result = self.failed(job, _first_line(getattr(e, "cause", None) or e))
                except (WorkerCrashedError, OutOfMemoryError, NodeDiedError, LocalRayletDiedError):
                    result = self.failed(job, self.died)
                except RayError as e:  # e.g. an object lost with its node, a cancelled task
                    result = self.failed(job, _first_line(e))
                yield result

    def close(self) -> None:
        """Cancel the tasks still queued or running (interrupted: Ctrl-C, an error in the driver); shut down
        the Ray this object started or connected to."""
        for ref in self.running:
            self.ray.cancel(ref)
        self.running.clear()
        if self.own:
            self.own = False
            self.ray.shutdown()
