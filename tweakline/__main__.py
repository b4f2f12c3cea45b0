"""``python -m tweakline``: the same as the ``tweakline`` command."""

from tweakline.cli.main import main

main()
