"""Interop with the Hugging Face ecosystem: models out (`export`) and in (`import_hf`), local
tokenizers, and the `seqlab` model type of lm-evaluation-harness. Importing this package
imports nothing from `transformers`; the modules that need it import it themselves."""
