"""``python -m p4r.cli``: the ``p4r`` command without an installed console script."""

from p4r.cli import main

if __name__ == "__main__":
    main(prog_name="p4r")
