"""What is measured rather than trained: parameters and multiply-adds (`complexity`), kept on disk
per model and code (`counts`), the exact cells the counter cannot express (`exact`), and the
times behind the papers' speed tables (`timing`)."""
