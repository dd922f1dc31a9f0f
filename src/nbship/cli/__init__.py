"""The `nbship` command: one module per command group, no business logic."""
