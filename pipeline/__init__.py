"""longtail-tfx pipeline: configuration, create_pipeline() wiring, runners and the CLI."""
