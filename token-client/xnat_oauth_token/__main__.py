"""``python -m xnat_oauth_token``: the ``xnat-token`` command."""

import sys

from . import main

sys.exit(main())
