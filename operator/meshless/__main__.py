import sys

from meshless.cli import main

sys.exit(main())
