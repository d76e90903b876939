"""Incoming documents (CLI, HTTP, _bulk_docs), task results and the values that name things ->
models, or every problem listed.

All input validation lives in this package; the service calls it before it writes anything.
"""

from __future__ import annotations

from dirt.documents.addresses import NodeAddress, parse_address
from dirt.documents.api import (
    make_cursor,
    parse_cursor,
    parse_since,
    record_envelope,
    tasks_envelope,
    token_name,
    token_scope,
)
from dirt.documents.results import ResultError, parse_results
from dirt.documents.submission import Submission, documents_of, parse_submission

__all__ = [
    "NodeAddress",
    "ResultError",
    "Submission",
    "documents_of",
    "make_cursor",
    "parse_address",
    "parse_cursor",
    "parse_results",
    "parse_since",
    "parse_submission",
    "record_envelope",
    "tasks_envelope",
    "token_name",
    "token_scope",
]
