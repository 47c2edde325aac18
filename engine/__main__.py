import sys

from ragrt.cli import main

sys.exit(main())
