"""The experiment's vocabulary, spoken by the engines, the sweep and the analysis alike."""
