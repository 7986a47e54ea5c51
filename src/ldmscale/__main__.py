import sys

from ldmscale.cli import main

sys.exit(main())
