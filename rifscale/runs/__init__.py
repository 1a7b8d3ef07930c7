"""Outputs: the run directory format (layout version 2, docs/design.md §6; :mod:`.format`),
reading runs back as tables, listing and export (:mod:`.listing`), and the writing rules
every output follows — locks, atomic publication, nothing overwritten unasked
(:mod:`.outputs`). The run format stores what the engine and the estimates computed; it
never imports the pipeline or the batch jobs that write it."""
