"""tinkjax.server."""
