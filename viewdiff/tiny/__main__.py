"""``python -m viewdiff.tiny``: an entry point, like train.py and infer.py."""

from viewdiff.commands.tiny import main

raise SystemExit(main())
