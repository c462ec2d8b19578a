//! The trace pipeline: masking, output limit, UTF-8 repair, checksum, offset-addressed storage.
