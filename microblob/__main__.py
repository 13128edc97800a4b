"""`python -m microblob ...`: the command line (see `microblob.cli`)."""

from .cli import main

raise SystemExit(main())
