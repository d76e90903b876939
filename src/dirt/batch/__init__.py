"""Batch systems as nodes: dirt hands a task to a cluster's scheduler as one batch job.

`commands` runs a batch system's command-line tools (here, or later on a login host over SSH);
`slurm` speaks Slurm through them; `jobscript` writes the script a task's job runs. Nothing
here touches the store: the dispatcher (docs/batch.md) decides what a job's state means for a
task's attempt.
"""

from __future__ import annotations

from dirt.errors import NodeError


class BatchError(NodeError):
    """The batch system refused or failed a request; the message carries its own words."""


class BatchUnavailableError(BatchError):
    """The batch system could not be asked (its controller or the login host did not answer).

    Nothing is known about its jobs then: a caller must not take a job for lost because of it.
    """
