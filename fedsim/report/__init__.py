"""Run reports: ``python -m fedsim.report DIR`` turns a run or multirun folder into tables and plots."""
