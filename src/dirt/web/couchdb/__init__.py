"""The CouchDB HTTP API over the project's database, for CouchDB clients and replicators.

`install(app)` adds it to the web app, after every other route: the welcome object at `GET /`
for non-HTML requests, the server endpoints (`/_all_dbs`, `/_session`, ...), the database's
endpoints under `/{database}`, and CouchDB-shaped answers for other database names. The README's
"CouchDB compatibility" section lists what is supported and what answers `501 not_implemented`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from dirt.couch.errors import CouchError
from dirt.couch.store import CouchStore
from dirt.service import Service
from dirt.web.couchdb import changes, database, documents, server
from dirt.web.couchdb.http import couch_error

log = logging.getLogger("dirt.web")


def install(app: FastAPI, service: Service) -> None:
    """Add the CouchDB API; call it last, after every other route and mount of the app."""
    settings = service.settings
    db_name = settings.project.database or settings.project.name
    if db_name in _first_segments(app):
        log.warning(
            "the database name %r is also one of dirt's paths (/%s): CouchDB clients cannot "
            "reach every document; set [project] database to another name",
            db_name,
            db_name,
        )
    app.state.couch = CouchStore(service)
    app.add_exception_handler(CouchError, couch_error)
    app.add_middleware(server.CouchWelcome)
    app.include_router(server.router)
    prefix = "/" + db_name
    for router in (changes.router, database.router, documents.router):
        app.include_router(router, prefix=prefix)
    app.include_router(server.fallback)


def _first_segments(app: FastAPI) -> set[str]:
    """The first path segment of every route the app has so far."""
    paths: list[str] = []
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # an included router (FastAPI keeps them whole)
            paths += [c.path for c in contexts()]
        elif isinstance(path := getattr(route, "path", None), str):
            paths.append(path)
    return {p.split("/")[1] for p in paths if p.count("/") >= 1}
