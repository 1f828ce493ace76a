import sys

from ssrl.cli import main

sys.exit(main())
