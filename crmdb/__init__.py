"""crmdb: the permission and data-flow layer of a CRM, enforced by PostgreSQL itself."""

__version__ = "0.1.0"
