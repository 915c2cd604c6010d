"""tinkjax.client."""
