"""The run store: what a sweep writes for each trial and what a report reads back.

``record`` (one trial run as stored, and where a sweep's runs live), ``reader`` (an MLflow store or an
export read into records and trials), ``export`` (the compact export's codec). It sits below both
``sweep`` (which writes it) and ``report`` (which reads it); neither imports the other's internals.
"""
