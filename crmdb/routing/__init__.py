"""Routing rules: files (model.py), their plan and apply (plan.py), offboarding."""
