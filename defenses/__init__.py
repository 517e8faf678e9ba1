"""Defenses, installed as ``fedsim.defenses``; each one a subclass of :class:`fedsim.defense.Defense`."""
