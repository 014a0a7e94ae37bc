"""The base every layer imports: settings, storage, logs and the shared services.

It imports no other project package."""
