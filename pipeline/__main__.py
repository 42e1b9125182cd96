"""``python -m pipeline`` is the ``pipeline`` command (the console script calls :func:`main` too)."""

import sys


def main() -> None:
    """The CLI; a Ctrl-C while it is still importing (its first ~0.25 s) exits 130 without a traceback."""
    try:
        from pipeline.cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(130)
    cli_main()


if __name__ == "__main__":  # a batch's worker processes import this module too
    main()
