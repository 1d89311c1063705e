"""Run the hnsel command line without installing: ``python cli.py select --budget 10``."""

from hnsel.cli import app

if __name__ == "__main__":
    app()
