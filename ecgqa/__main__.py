import sys

from ecgqa.cli import main

sys.exit(main())
