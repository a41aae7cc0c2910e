"""Studies on extracted features: grouped-CV classification, generalization across domains,
feature reduction (Ling et al. 2017). Each study returns an ``xarray.Dataset``;
:mod:`xaiflow.studies.report` stores it as ``studies/<dataset>/<name>`` and writes tidy CSV
tables and figures."""
