"""CouchDB's document model over dirt's store: revisions, opaque sequences, documents, edits.

The web layer (`dirt.web.couchdb`) speaks HTTP; everything here takes a `Service` and keeps the
usual layering: reads in one read transaction, writes through the service's write path.
"""
