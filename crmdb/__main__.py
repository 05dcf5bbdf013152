"""`python -m crmdb` runs the CLI."""

from crmdb.cli import main

main(prog_name="crmdb")
