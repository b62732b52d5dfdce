//! The HTML side: one askama template (`templates/page.html`) fed with
//! sections (heading, chart, table) built from the same structs the JSON
//! twins serialise, one module per page.

mod alerts;
mod conflicts;
mod cost;
mod divergence;
mod failovers;
mod latency;
mod layout;
mod overview;
mod replication;
mod slos;

pub use alerts::alerts;
pub use conflicts::conflicts;
pub use cost::cost;
pub use divergence::divergence;
pub use failovers::failovers;
pub use latency::latency;
pub use layout::{
    ActionForm, Cell, Chrome, NAV, Page, Queue, QueueItem, Section, SqlConsole, SqlTable, Table,
};
pub use overview::overview;
pub use replication::replication;
pub use slos::slos;
