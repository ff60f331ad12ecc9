"""`python -m minisvd`: see `minisvd.cli`."""

import sys

from minisvd.cli import main

if __name__ == "__main__":
    sys.exit(main())
