"""Alembic environment: dirt always hands in the connection to migrate."""

from alembic import context

from dirt.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
