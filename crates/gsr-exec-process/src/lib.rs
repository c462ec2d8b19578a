//! The local (shell) executor: one bash process group per step.
