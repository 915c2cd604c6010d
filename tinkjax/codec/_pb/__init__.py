"""Generated protobuf module (``make proto``); do not edit by hand."""
