//! The change feed: every version the region applied, local or
//! replicated, in the order it applied them, read by position.
//!
//! The writer appends to the feed in the same transaction as the entity
//! (see [`crate::store`]), so a reader never sees an entity change without
//! its feed entry or the other way round. System classes stay out of it.

use std::time::Duration;

use parallax_core::api::{Change, ChangesPage};
use parallax_core::config::SYSTEM_CLASS_PREFIX;
use parallax_core::entity::Entity;
use parallax_core::error::{Error, Result};
use serde_json::Value;
use tokio::sync::watch;

use super::Node;
use crate::store::StoredChange;

/// The most changes one page holds.
pub const MAX_PAGE: usize = 10_000;

/// Where a reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// After this position (0: everything the feed still keeps).
    After(u64),
    /// At the feed's head: only what is applied from now on.
    Head,
}

impl Cursor {
    /// Parses `after=` (a position, or `head`).
    pub fn parse(text: Option<&str>) -> Result<Cursor> {
        match text {
            None | Some("") => Ok(Cursor::After(0)),
            Some("head") => Ok(Cursor::Head),
            Some(t) => t.parse().map(Cursor::After).map_err(|_| {
                Error::BadRequest(format!(
                    "after `{t}` is not a feed position. Fix: pass the `seq` of the last change you read (or `next` of the last page), `head` to start from now, or nothing to read everything the feed keeps"
                ))
            }),
        }
    }
}

impl Node {
    /// A page of the change feed after `cursor`: at most `limit` changes,
    /// of `class` only when given. A cursor the feed cannot serve from (its
    /// changes were trimmed, or it is ahead of the feed) is a
    /// [`Error::CursorExpired`] that says where to resume.
    pub fn changes(
        &self,
        cursor: Cursor,
        limit: usize,
        class: Option<&str>,
    ) -> Result<ChangesPage> {
        if let Some(c) = class {
            self.class(c)?;
        }
        let now_us = self.inner.clock.now_us();
        let limit = limit.clamp(1, MAX_PAGE);
        let after = match cursor {
            Cursor::After(a) => a,
            Cursor::Head => u64::MAX,
        };
        let page = self.inner.store.changes(after, limit, class)?;
        let after = match cursor {
            Cursor::After(a) => a,
            Cursor::Head => page.head,
        };
        let region = &self.inner.region;
        if after < page.trimmed {
            return Err(Error::CursorExpired(format!(
                "region {region}'s change feed no longer holds the changes after {after}: it keeps them from {} on (storage.feed_retain_ms, storage.feed_max_entries). Fix: re-read what you cache, then resume with after={}",
                page.trimmed + 1,
                page.head
            )));
        }
        if after > page.head {
            return Err(Error::CursorExpired(format!(
                "position {after} is ahead of region {region}'s change feed (head {}): it comes from another region's feed or from a store that was replaced. Fix: re-read what you cache, then resume with after={}",
                page.head, page.head
            )));
        }
        let changes: Vec<Change> = page
            .changes
            .into_iter()
            .filter(|(_, c)| !c.class.starts_with(SYSTEM_CLASS_PREFIX))
            .map(|(seq, c)| to_change(seq, c))
            .collect();
        let next = changes.last().map_or(after, |c| c.seq);
        Ok(ChangesPage {
            region: region.clone(),
            changes,
            next,
            head: page.head,
            trimmed: page.trimmed,
            now_us,
        })
    }

    /// Waits up to `wait` for the feed to move past `after`; returns at
    /// once if it has.
    pub async fn wait_for_changes(&self, after: u64, wait: Duration) {
        let mut rx = self.subscribe_feed();
        let _ = tokio::time::timeout(wait, rx.wait_for(|head| *head > after)).await;
    }

    /// A watch of the feed's newest position.
    pub fn subscribe_feed(&self) -> watch::Receiver<u64> {
        self.inner.repl.subscribe_feed()
    }
}

fn to_change(seq: u64, c: StoredChange) -> Change {
    let entity = c.entity.as_deref().map(Entity::decode);
    let (value, hlc, version) = match entity {
        Some(Ok(e)) => (
            e.value().unwrap_or(Value::Null),
            Some(e.hlc.clone()),
            e.version,
        ),
        Some(Err(e)) => {
            tracing::warn!(class = %c.class, key = %c.key, error = %e, "A change in the feed holds an undecodable entity.");
            (Value::Null, None, Default::default())
        }
        None => (Value::Null, None, Default::default()),
    };
    Change {
        seq,
        ts_us: c.ts_us,
        deleted: c.entity.is_none(),
        class: c.class,
        key: c.key,
        source: c.source,
        value,
        hlc,
        version,
    }
}
