//! One run's execution: its context, the scopes that hand out step positions, the step
//! future, the drive loop and the registry of workflow definitions.
//!
//! The engine talks to the journal through [`Store`](crate::journal::Store) and to the
//! runtime through [`Runs`](context::Runs), a trait it defines: it never imports the
//! runtime.

pub(crate) mod call;
pub(crate) mod context;
pub(crate) mod drive;
pub(crate) mod recorded;
pub(crate) mod replay;
pub(crate) mod scope;
pub(crate) mod step;
pub(crate) mod workflow;
