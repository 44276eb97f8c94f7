"""Data: corpus readers, vocabularies, content-hashed on-disk caches."""
