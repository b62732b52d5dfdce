//! The change feed over HTTP: `GET /v1/changes` (a page, optionally
//! waiting for the next change: long polling) and `GET /v1/changes/stream`
//! (Server-Sent Events: a `change` event per change, its `id` the
//! position, so a reconnecting `EventSource` resumes with `Last-Event-ID`;
//! a `heartbeat` every second; an `expired` event, then the end, when the
//! reader fell behind what the feed keeps).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use parallax_core::api::{CacheReport, Change, FeedHeartbeat};
use parallax_core::telemetry::CacheEvent;
use serde::Deserialize;

use super::*;
use crate::node::{Cursor, MAX_PAGE};

/// How often a stream says where the feed is when nothing changes.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The longest `wait_ms` a page request may ask for.
const MAX_WAIT_MS: u64 = 30_000;

/// Query parameters of the feed routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedParams {
    after: Option<String>,
    class: Option<String>,
    limit: Option<String>,
    wait_ms: Option<String>,
}

fn feed_query_error(e: QueryRejection) -> Error {
    Error::BadRequest(format!(
        "the query string is not valid: {e}. Fix: use only after=, class=, limit= and wait_ms="
    ))
}

fn number(name: &str, text: Option<&str>, default: u64) -> Result<u64, Error> {
    match text {
        None => Ok(default),
        Some(t) => t.parse().map_err(|_| {
            Error::BadRequest(format!(
                "{name} `{t}` is not a whole number. Fix: pass {name}=<number>"
            ))
        }),
    }
}

/// A place among the feed's readers (`limits.max_feed_readers`), or 503.
fn reader_permit(state: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
    Arc::clone(&state.feed_readers)
        .try_acquire_owned()
        .map_err(|_| {
            Error::Unavailable(format!(
                "region {} already serves limits.max_feed_readers = {} change-feed readers. Fix: share one stream among a process's caches, read pages without wait_ms, or raise the limit",
                state.node.region(),
                state.node.config().limits.max_feed_readers
            ))
        })
}

/// What the `requests` table records of a feed request.
fn feed_meta(op: &'static str, headers: &HeaderMap) -> Meta {
    Meta {
        op,
        class: String::new(),
        consistency: "local".into(),
        client_geo: client_geo(headers),
    }
}

pub(super) async fn changes(
    State(state): State<ApiState>,
    query: Result<Query<FeedParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let mut started = Instant::now();
    let mut meta = feed_meta("changes", &headers);
    let result = async {
        client_auth(&state, &headers)?;
        let _reader = reader_permit(&state)?;
        let Query(p) = query.map_err(feed_query_error)?;
        meta.class = p.class.clone().unwrap_or_default();
        let cursor = Cursor::parse(p.after.as_deref())?;
        let limit = number("limit", p.limit.as_deref(), 1_000)? as usize;
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::BadRequest(format!(
                "limit {limit} is out of range. Fix: pass limit between 1 and {MAX_PAGE}"
            )));
        }
        let timeout = state.node.config().limits.request_timeout_ms;
        let wait_ms = number("wait_ms", p.wait_ms.as_deref(), 0)?;
        let cap = MAX_WAIT_MS.min(timeout / 2);
        if wait_ms > cap {
            return Err(Error::BadRequest(format!(
                "wait_ms {wait_ms} is longer than {cap} (half of limits.request_timeout_ms, at most {MAX_WAIT_MS}). Fix: pass a shorter wait_ms and ask again"
            )));
        }
        let node = &state.node;
        let mut page = node.changes(cursor, limit, p.class.as_deref())?;
        if page.changes.is_empty() && wait_ms > 0 {
            let waiting = Instant::now();
            node.wait_for_changes(page.next, Duration::from_millis(wait_ms))
                .await;
            // The wait asked for is not latency: the `requests` table (and
            // the latency SLO) count only the work.
            started += waiting.elapsed();
            page = node.changes(Cursor::After(page.next), limit, p.class.as_deref())?;
        }
        Ok((json_response(StatusCode::OK, &page), node.region().to_owned()))
    }
    .await;
    finish(&state, meta, started, result)
}

pub(super) async fn stream(
    State(state): State<ApiState>,
    query: Result<Query<FeedParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let mut meta = feed_meta("changes_stream", &headers);
    let opened = (|| {
        client_auth(&state, &headers)?;
        let permit = reader_permit(&state)?;
        let Query(p) = query.map_err(feed_query_error)?;
        if p.limit.is_some() || p.wait_ms.is_some() {
            return Err(Error::BadRequest(
                "limit= and wait_ms= are for GET /v1/changes; a stream sends every change as it is applied. Fix: drop them".into(),
            ));
        }
        meta.class = p.class.clone().unwrap_or_default();
        let resume = headers
            .get("last-event-id")
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::BadRequest("the Last-Event-ID header is not text".into()))
            })
            .transpose()?;
        let cursor = Cursor::parse(resume.or(p.after.as_deref()))?;
        // Check the cursor (and the class) now, while an error can still
        // be an HTTP status.
        let first = state.node.changes(cursor, MAX_PAGE, p.class.as_deref())?;
        Ok((first, p.class, permit))
    })();
    let (first, class, permit) = match opened {
        Ok(v) => v,
        Err(e) => return finish(&state, meta, started, Err(e)),
    };
    let node = state.node.clone();
    let region = node.region().to_owned();
    let reader = FeedReader {
        node: node.clone(),
        class,
        position: first.next,
        pending: first.changes.into(),
        feed: node.subscribe_feed(),
        closed: node.streams_closed(),
        beat_due: tokio::time::Instant::now(),
        done: false,
        _permit: permit,
    };
    let events = futures::stream::unfold(reader, |mut r| async move {
        let event = r.next().await?;
        Some((Ok::<_, Infallible>(event), r))
    });
    let response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    finish(&state, meta, started, Ok((response, region)))
}

/// One stream's reading state.
struct FeedReader {
    node: crate::node::Node,
    class: Option<String>,
    position: u64,
    pending: VecDeque<Change>,
    feed: tokio::sync::watch::Receiver<u64>,
    closed: tokio::sync::watch::Receiver<bool>,
    beat_due: tokio::time::Instant,
    done: bool,
    /// Held while the stream is open.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl FeedReader {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.done || *self.closed.borrow() {
                return None;
            }
            if let Some(c) = self.pending.pop_front() {
                let event = SseEvent::default()
                    .event("change")
                    .id(c.seq.to_string())
                    .json_data(&c)
                    .ok()?;
                return Some(event);
            }
            let now = tokio::time::Instant::now();
            if now >= self.beat_due {
                self.beat_due = now + HEARTBEAT;
                // Read what is committed first, so the heartbeat's head
                // never claims a change the stream has not sent.
                match self.node.changes(
                    Cursor::After(self.position),
                    MAX_PAGE,
                    self.class.as_deref(),
                ) {
                    Ok(page) if page.changes.is_empty() => {
                        let beat = FeedHeartbeat {
                            region: page.region,
                            head: page.next.max(self.position),
                            now_us: page.now_us,
                        };
                        return SseEvent::default().event("heartbeat").json_data(&beat).ok();
                    }
                    Ok(page) => {
                        self.position = page.next;
                        self.pending = page.changes.into();
                        continue;
                    }
                    Err(e) => return self.expired(&e),
                }
            }
            tokio::select! {
                changed = self.feed.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    match self.node.changes(Cursor::After(self.position), MAX_PAGE, self.class.as_deref()) {
                        Ok(page) => {
                            self.position = page.next;
                            self.pending = page.changes.into();
                        }
                        Err(e) => return self.expired(&e),
                    }
                }
                _ = self.closed.changed() => return None,
                _ = tokio::time::sleep_until(self.beat_due) => {}
            }
        }
    }

    fn expired(&mut self, e: &Error) -> Option<SseEvent> {
        self.done = true;
        SseEvent::default()
            .event("expired")
            .json_data(e.to_api())
            .ok()
    }
}

/// `POST /v1/cache-reports`: a client's feed-kept cache reports a window
/// of its reads; the region records it in its `cache_reads` table.
pub(super) async fn cache_report(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_body_bytes;
    let result = (|| {
        client_auth(&state, &headers)?;
        let body = body.map_err(|e| body_error(e, limit))?;
        let report: CacheReport = serde_json::from_value(parse_json(&body)?).map_err(|e| {
            Error::BadRequest(format!(
                "{e}. Fix: send a cache report as parallax_core::cache::FeedCache::report makes it (client, location, window_ms, reads, hits, misses, bypassed, invalidations, settled, stale_hits, staleness_*_ms, feed_lag_ms)"
            ))
        })?;
        check_report(&report)?;
        let node = &state.node;
        node.telemetry().emit(Event::Cache(CacheEvent {
            ts_us: node.clock().now_us(),
            region: node.region().to_owned(),
            report,
        }));
        Ok(node.region().to_owned())
    })();
    match result {
        Ok(region) => json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "region": region, "recorded": true }),
        ),
        Err(e) => error_response(&e),
    }
}

fn check_report(r: &CacheReport) -> Result<(), Error> {
    let name_ok = |s: &str| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control);
    if !name_ok(&r.client) || !(r.location.is_empty() || name_ok(&r.location)) {
        return Err(Error::BadRequest(
            "client must be 1 to 64 printable characters, location at most 64. Fix: name the client (and where it is) briefly".into(),
        ));
    }
    if r.hits + r.misses + r.bypassed != r.reads || r.stale_hits > r.settled {
        return Err(Error::BadRequest(format!(
            "the counts do not add up: reads {} must be hits {} + misses {} + bypassed {}, and stale_hits {} at most settled {}. Fix: send the counters of one window as the cache counted them",
            r.reads, r.hits, r.misses, r.bypassed, r.stale_hits, r.settled
        )));
    }
    let bad = [r.staleness_p50_ms, r.staleness_p99_ms, r.staleness_max_ms]
        .into_iter()
        .flatten()
        .any(|v| !v.is_finite() || v < 0.0);
    if bad {
        return Err(Error::BadRequest(
            "staleness_p50_ms, staleness_p99_ms and staleness_max_ms must be finite and not negative (or null). Fix: send what the cache measured".into(),
        ));
    }
    Ok(())
}
