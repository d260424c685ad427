"""``python -m arcflow``."""

from .cli import main

raise SystemExit(main())
