import sys

from latentlm.cli import main

sys.exit(main())
