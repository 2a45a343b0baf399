"""The paper's proposed method (§IV-C): its run (`run`), the adversarial steps of the unpaired
translator (`gan`), the translator's warm-up (`warmup`) and what a person reads to judge the
translation (`diagnostics`)."""
