"""How a run is judged: metrics, per-image scoring on the device, which epoch is kept
(`selection`), which target labels a run may read (`label_budget`) and whether an adapted
result is harmful (`guard`)."""
