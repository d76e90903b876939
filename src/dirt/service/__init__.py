"""The use cases: the only writer of the store. Owns transactions, bumps the change sequence.

`Service` is one object composed of a part per client, all over one write helper
(`ServiceBase._write`): `Dispatching` (what the dispatcher asks), `Administration` (what users
change: submissions, nodes, cancel and retry, tokens) and `Queries` (every read of the CLI and
the web).
"""

from __future__ import annotations

from dirt.models import Finished
from dirt.service.administration import Administration
from dirt.service.base import new_master_id
from dirt.service.dispatching import Dispatching
from dirt.service.queries import AttachmentFile, OutputView, Queries, RecordDetail

__all__ = ["AttachmentFile", "Finished", "OutputView", "RecordDetail", "Service", "new_master_id"]


class Service(Dispatching, Administration, Queries):
    """Every write of records, tasks and nodes goes through here."""
