"""tinkjax.cli."""
