"""Options, validation and the running context: torch-free, below every other layer."""
