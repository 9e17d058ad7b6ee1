"""`python -m dynacnn` runs the command-line tool (under `torchrun`, `main` joins the process group first)."""

from dynacnn.cli import main

main()
