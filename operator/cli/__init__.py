"""The `bakeline` command."""
