//! Integration tests: real `git` against fixture repositories in temp dirs (`file://`
//! remotes, and a smart-HTTP server with Basic auth for the credential path).

mod fixtures;
mod http;
mod sources;
