import sys

from permsym.cli import main

sys.exit(main())
