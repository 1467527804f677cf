"""The `shanshui` command line (entry point `shanshui.cli:main`)."""

from shanshui.cli.app import app, main

__all__ = ["app", "main"]
