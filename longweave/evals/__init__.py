"""Evaluation helpers: benchmark case generators (needle in a haystack), loaders, metrics."""
