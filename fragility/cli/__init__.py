"""Command-line interface (filled in by the CLI issue)."""


def main() -> None:  # pragma: no cover
    raise SystemExit("not yet")
