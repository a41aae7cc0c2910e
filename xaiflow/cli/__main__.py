"""``python -m xaiflow.cli``: the same app as the ``xaiflow`` console script."""

from xaiflow.cli.app import app

if __name__ == "__main__":
    app()
