"""``python -m hnsel ...``: the same command line as the ``hnsel`` script."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="hnsel")
