//! gsr-web integration tests: the app driven with `oneshot`, talking to a real `gsr-sim`
//! (OAuth provider + user-token runner API) over HTTP.

mod harness;
mod login;
mod logs;
mod modes;
mod runners;
