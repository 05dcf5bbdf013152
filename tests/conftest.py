pytest_plugins = ["crmdb.testing.pytest_plugin"]
