"""The SQL database: ORM classes, sessions and Alembic migrations."""
