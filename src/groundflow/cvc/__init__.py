"""CVC method logic: ingest, entities, causality, instructions."""
