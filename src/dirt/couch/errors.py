"""CouchDB's errors: an `error` code, a `reason` for people, and the HTTP status they carry."""

from __future__ import annotations

from dirt.errors import DirtError

STATUS = {
    "bad_request": 400,
    "query_parse_error": 400,
    "illegal_database_name": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "conflict": 409,
    "file_exists": 412,
    "too_large": 413,
    "bad_content_type": 415,
    "not_implemented": 501,
}


class CouchError(DirtError):
    """Answered as `{"error": error, "reason": reason}` with the status CouchDB uses."""

    def __init__(self, error: str, reason: str) -> None:
        self.error = error
        self.reason = reason
        self.status = STATUS.get(error, 500)
        super().__init__(reason)


def conflict() -> CouchError:
    return CouchError("conflict", "Document update conflict.")


def missing(what: str = "missing") -> CouchError:
    return CouchError("not_found", what)
