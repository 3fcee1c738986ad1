"""``python -m llm_eval`` = ``ecgqa llm-eval``."""

import sys

from ecgqa.cli import main

sys.exit(main(["llm-eval", *sys.argv[1:]]))
