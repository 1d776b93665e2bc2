//! A change to working state that commits in the same transaction as the
//! audit records describing it, or not at all. The approval workflow uses it so
//! that no access request changes state without its record in the chain, and
//! so that its compare-and-set and its record cannot be separated by a crash
//! or a lost race.
//!
//! The audit store runs the statements under the chain lock: first `check`,
//! which must change exactly one row (the compare-and-set); if it changes
//! none, nothing is written and the caller learns it lost. Otherwise `then`
//! runs, the records are sealed onto the chain, and all of it commits at once.

/// One value bound to a statement placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Text(Option<String>),
    Int(i64),
}

/// One SQL statement in the text both backends accept (`$1` placeholders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Bind>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, binds: Vec<Bind>) -> Self {
        Statement {
            sql: sql.into(),
            binds,
        }
    }
}

/// A guarded change: `check` must change exactly one row for `then` and the
/// audit records to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub check: Statement,
    pub then: Vec<Statement>,
}
