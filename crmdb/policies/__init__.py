"""Role templates (policies/*.yaml) compiled into row-level security."""
