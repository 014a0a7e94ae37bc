"""The study's domain rules, shared by the portal, the workers and the CLI: files handed over, scope, intake,
duplicates, the study result and review decisions. No Flask and no Celery here."""
