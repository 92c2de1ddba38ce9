"""``python -m style_exp.reproduce``, as users type it: runs its code's ``main``."""

import sys

from style_exp.app.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
