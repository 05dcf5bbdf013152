"""The routing worker: one batch (batch.py), the loop around it (loop.py), logs (logs.py)."""
