"""``python -m tsvmerge merge ...``: the ``tsvmerge`` command."""

from tsvmerge.console import main

raise SystemExit(main())
