"""Gradient-inversion privacy attacks (DLG, iDLG, Inverting Gradients, GIFD) run by an honest-but-curious server."""
