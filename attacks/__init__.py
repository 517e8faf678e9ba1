"""Attacks, installed as ``fedsim.attacks``; poisoning attacks subclass :class:`fedsim.attack.Attack`."""
