"""`python -m podcastpile.cli`: the same as the `ppcli` console script."""

from podcastpile.cli import main

main()
