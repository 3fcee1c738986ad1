"""``python -m mapping`` = ``ecgqa map``."""

import sys

from ecgqa.cli import main

sys.exit(main(["map", *sys.argv[1:]]))
