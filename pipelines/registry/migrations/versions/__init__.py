"""Alembic revisions of the registry schema, oldest first (``vNNNN_<slug>.py``)."""
