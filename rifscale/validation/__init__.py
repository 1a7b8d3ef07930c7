"""Validation: the estimates against exact retrains (docs/design.md §2.6, §4).

:mod:`.removal` draws removal sets by strategy; :mod:`.exact` runs batched exact retrains
with error certificates (the truth every estimate is compared with); :mod:`.experiments`
runs the accuracy, sweep and poisoning experiments; :mod:`.report` draws their figures
and the HTML report. The experiments' entry points are importable from here::

    import rifscale.validation
    sets = rifscale.validation.make_sets(result, sizes=[10, 100], seed=0)
"""

from .experiments import accuracy, make_sets, poisoning, run_validation, summarise, sweeps

__all__ = ["accuracy", "make_sets", "poisoning", "run_validation", "summarise", "sweeps"]
