"""Schema registry, training pairs, splits, synthetic pairs and the one prompt builder.

This is forma's root package: it imports no other forma package, and every other one may import it.
"""
