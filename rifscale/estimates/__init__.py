"""Estimates from one fit: the test metrics and their gradients (:mod:`.metrics`, docs/design.md
§3) and group (leave-T-out) effects by IF, RIF and the Newton step (:mod:`.groups`, §2.4).
Built on the engine's fitted model; knows nothing of run directories or retrains."""
