"""``python -m style_exp.server``, as users type it: runs its code's ``main``."""

import sys

from style_exp.cluster.server import main

if __name__ == "__main__":
    sys.exit(main())
