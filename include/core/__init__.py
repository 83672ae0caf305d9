"""Shared core: configuration, names, storage layout. Imports no phase."""
