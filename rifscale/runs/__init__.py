"""Outputs: the run directory format (layout version 2, docs/design.md §6; :mod:`.format`),
reading a run back (:mod:`.reading`: its manifest, model and arrays as a ``Run``), listing
runs and exporting their scores as tables (:mod:`.listing`), and the writing rules
every output follows — locks, atomic publication, nothing overwritten unasked
(:mod:`rifscale.outputs`). The run format stores what the engine and the estimates computed; it
never imports the pipeline or the batch jobs that write it."""
