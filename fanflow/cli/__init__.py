"""CLI layer: the ``fanflow`` command (typer)."""
