"""The use cases: the only writer of the store. Owns transactions, bumps the change sequence.

`Service` is one object composed of a part per client, all over one write helper
(`ServiceBase._write`): `Dispatching` (what the dispatcher asks), `Masters` (on top of it:
leases, taking over dead masters, node leases), `Administration` (what users change:
submissions, nodes, cancel and retry, tokens) and `Queries` (every read of the CLI and the web).
"""

from __future__ import annotations

from dirt.models import Finished
from dirt.service.administration import Administration
from dirt.service.base import new_master_id
from dirt.service.masters import Masters
from dirt.service.queries import Queries, RecordDetail

__all__ = ["Finished", "RecordDetail", "Service", "new_master_id"]


class Service(Masters, Administration, Queries):
    """Every write of records, tasks and nodes goes through here."""
