import sys

from monolith_serving.cli import main

sys.exit(main())
