"""Email: the outbox the worker sends (sender.py, smtp.py), templates (render.py), SMTP
settings (config.py), automation emails managed from files (automations.py)."""
