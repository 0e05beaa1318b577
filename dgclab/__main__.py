"""``python -m dgclab``: see ``dgclab.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
