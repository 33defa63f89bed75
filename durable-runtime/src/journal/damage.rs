//! What a journal check reports: one entry per damaged thing, by workflow where the
//! damage can be pinned to one.

/// One piece of damage that [`Runtime::check`](crate::Runtime::check) or
/// [`JournalView::check`](crate::JournalView::check) found in a journal.
///
/// A check reads every page of the journal (SQLite's `integrity_check`) and every
/// recorded value against its checksum; it reports what it finds and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The workflow the damage belongs to, when it can be told: a value that fails its
    /// checksum names its workflow; a damaged page of SQLite's files usually cannot.
    pub workflow_id: Option<String>,
    /// What is damaged, in words.
    pub what: String,
}

impl Damage {
    pub(crate) fn new(workflow_id: Option<&str>, what: impl Into<String>) -> Self {
        Damage {
            workflow_id: workflow_id.map(str::to_owned),
            what: what.into(),
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.workflow_id {
            Some(id) => write!(f, "workflow `{id}`: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}
