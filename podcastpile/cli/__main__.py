from podcastpile.cli import main

main()
