"""The report's options, in a module light enough for the CLI to import at start-up."""

FORMATS = ("md", "tex", "csv", "html")
CI_METHODS = ("t", "bootstrap")  # t across folds / repetitions, or bootstrap across test images
