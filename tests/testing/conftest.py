"""The example project is a user's project: it runs only in a pytest of its own."""

collect_ignore = ["example_project"]
