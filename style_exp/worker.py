"""``python -m style_exp.worker start|stop|status``, as users type it: runs its code's ``main``."""

import sys

from style_exp.app.worker import main

if __name__ == "__main__":
    sys.exit(main())
