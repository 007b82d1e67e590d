"""Command-line client of the TorchServe tagger: ``python -m client.tag IMAGE...``."""
