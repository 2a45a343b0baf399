"""Cross-dataset transfer from a labelled source (JSRT) to a target: `dispatch` runs a config's
method; `source_only`, `target_training` (finetune, scratch), `self_training` and `proposed/`
(the paper's method) are the methods; `outcome` is what every one of them ends with."""
