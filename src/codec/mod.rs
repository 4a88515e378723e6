//! Decoding input records and encoding outputs.
