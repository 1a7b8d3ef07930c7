"""Audits from one fit: questions a user asks of the model beyond its scores.

:mod:`.loo` and :mod:`.tuning`: the choice of λ by approximate leave-one-out along a
warm-started λ path (``rifscale tune``, :func:`rifscale.tune`; docs/design.md §8.10), with
exact leave-one-out retrains of a sample beside the estimate. :mod:`.audit`: the smallest
training sets found whose removal flips a test prediction, each certified by an exact
retrain, with a proven lower bound on any flip set's size (``rifscale audit``,
:func:`rifscale.audit`; §8.11). They sit above the engine, the estimates and the exact
retrains they use, and below the command line.
"""
