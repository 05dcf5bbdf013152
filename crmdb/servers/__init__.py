"""PostgreSQL servers crmdb can start: the embedded wheel, local binaries, Docker."""
