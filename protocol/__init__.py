"""The experiment's vocabulary, spoken by the engines, the sweep and the analysis alike: a run's
config and profiles, the grid of Table I / Table II cells, tuning records, the Parquet schema,
the run-directory contract and the results store; and what the layers above share besides
(the t-interval of a mean, the duration format). Imports `data_io` and `models` only."""
