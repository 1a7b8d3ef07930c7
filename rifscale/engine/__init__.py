"""The engine: the fit, the factor and the per-sample scores of one model.

Bottom of the data flow (docs/design.md §7). :mod:`.kernels` holds the pure per-block
maths (NumPy or CuPy, no Dask); :mod:`.family` is the model-family seam, whose binary
logistic implementation owns every formula of the model; :mod:`._blocks` and
:mod:`.partition` wire kernels into Dask passes over row blocks placed on the workers;
:mod:`.newton` is the Newton core shared by the fit and the exact retrains, with the error
certificates; :mod:`.hessian` sums a pass's loss, gradient and Hessian; :mod:`.fit` runs
the fit as named steps; :mod:`.factor` factors H (SciPy, or CuPy on a GPU worker);
:mod:`.model` is the fitted state every later stage takes; :mod:`.scores` builds the lazy
per-sample scores pass. The engine imports nothing from the corpus, estimates, runs or
validation packages except the corpus's data checks, which name the data in its errors.
"""
