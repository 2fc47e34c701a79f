"""Use a trained multi-view prior: ``python infer.py <command> ...``, the same as the installed
``viewdiff-infer``; the commands are listed in ``viewdiff/commands/infer.py`` (``--help``)."""

from viewdiff.commands.infer import console_main, main  # noqa: F401

if __name__ == "__main__":
    console_main()
