import sys

from llm_eval.cli import main

sys.exit(main())
