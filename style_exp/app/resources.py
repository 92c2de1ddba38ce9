"""The CPUs a cluster's scheduler gave this job, and TensorFlow's threads sized to them."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any


def allotted_cpus() -> int | None:
    """The CPUs the scheduler gave this job: Ray's assignment, or SLURM's cpus-per-task."""
    ray = sys.modules.get("ray")  # only a Ray worker has it loaded; never import it here
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):  # a driver, not a task: no assignment
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, math.floor(cpus))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(slurm) if slurm.isdigit() else None


def configure_threads(threads: Any) -> dict[str, str]:
    """Size TensorFlow's thread pools to the job's CPUs, and return tags saying so.

    ``threads.*`` set explicitly win; otherwise a job the scheduler gave n CPUs uses n
    threads (not one per core of a machine it shares), and a job on its own machine
    leaves the choice to TensorFlow.
    """
    from style_exp.engine import device

    cpus = allotted_cpus()
    device.configure(threads.intra_op or cpus or 0, threads.inter_op or cpus or 0)
    return {"threads.allotted_cpus": str(cpus)} if cpus else {}
