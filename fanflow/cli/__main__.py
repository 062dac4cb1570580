"""``python -m fanflow.cli`` runs the ``fanflow`` command."""

from fanflow.cli.main import app

app(prog_name="fanflow")
