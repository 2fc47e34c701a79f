"""``python -m viewdiff.toy``: an entry point, like train.py and infer.py."""

from viewdiff.commands.toy import main

raise SystemExit(main())
