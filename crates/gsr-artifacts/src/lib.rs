//! Building and extracting artifact archives (zip, gzip, raw) from path rules.
