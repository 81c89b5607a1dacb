"""graphgen's version, in one place (the package, the CLI and every generated module)."""

__version__ = "0.1.0"
