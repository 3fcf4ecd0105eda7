import sys

from refinery.cli import main

sys.exit(main())
