"""The use cases: the only writer of the store. Owns transactions, bumps the change sequence.

`Service` is one object composed of a part per client, all over one write helper
(`ServiceBase._write`): `Dispatching` (what the dispatcher asks), `Masters` (on top of it:
leases, taking over dead masters, node leases), `Agents` and `AgentReports` (what pull-mode
agents ask, over HTTP), `Administration` (what users change: submissions, nodes, cancel and
retry, tokens), `Intake` (records from change sources, each taken once), `Queries` (every read
of the CLI and the web), `Queue` (the queue view and the dispatchers' announcements) and
`Outbox` (the notification rows, for the sender and `dirt notify`). The writing parts share
`Notices`, which adds the notification rows a change makes to the change's own transaction.
"""

from __future__ import annotations

from dirt.models import Finished
from dirt.service.administration import Administration
from dirt.service.agents import JobOffer, Sweep
from dirt.service.base import new_master_id
from dirt.service.batch import Batch
from dirt.service.intake import Intake, Taken
from dirt.service.masters import Masters
from dirt.service.outbox import Outbox
from dirt.service.queries import AttachmentFile, OutputView, Queries, RecordDetail
from dirt.service.queue import Queue, QueueEntry, QueueView

__all__ = [
    "AttachmentFile",
    "Finished",
    "JobOffer",
    "OutputView",
    "QueueEntry",
    "QueueView",
    "RecordDetail",
    "Service",
    "Sweep",
    "Taken",
    "new_master_id",
]


class Service(Batch, Masters, Administration, Intake, Queries, Queue, Outbox):
    """Every write of records, tasks and nodes goes through here."""
