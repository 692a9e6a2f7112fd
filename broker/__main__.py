"""``python -m broker`` is the ``broker`` command."""

import sys

from broker.entry import main

sys.exit(main())
