"""`python -m dynacnn` runs the command-line tool."""

from dynacnn.cli import main

main()
