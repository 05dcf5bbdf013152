"""Throwaway PostgreSQL clusters and scratch databases for tests and `crmdb policy test`."""
