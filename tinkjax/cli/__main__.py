"""``python -m tinkjax.cli``: the same as the ``tinkjax`` command."""

from tinkjax.cli._main import main

raise SystemExit(main())
