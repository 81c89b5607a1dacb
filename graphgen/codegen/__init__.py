"""What every backend shares: the program, its schedule, names, comments, layout and
templates (docs/architecture.md)."""
