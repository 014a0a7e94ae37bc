"""Celery workers: take queued studies in batches and screen them."""
