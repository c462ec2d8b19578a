//! Runs one claimed job end to end: sources, steps, artifacts, trace, final update.
