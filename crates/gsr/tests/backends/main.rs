//! The backend conformance suite (`gsr_backend::conformance`) against real backends, with
//! the real `gsr` binary (`gsr exec` is what every backend starts) and an in-process
//! `gsr-sim`. One module per backend.

mod docker;
mod lambda;
mod local;
