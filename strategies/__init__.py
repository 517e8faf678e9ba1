"""Aggregation strategies, installed as ``fedsim.strategies``; each one a subclass of :class:`fedsim.strategy.Strategy`."""
