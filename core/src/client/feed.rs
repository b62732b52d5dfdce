//! The change feed from the client side: a page (`GET /v1/changes`) and
//! a stream (`GET /v1/changes/stream`, Server-Sent Events) read event by
//! event.

use std::time::Duration;

use reqwest::Method;

use super::{Auth, ClientError, RegionClient, query};
use crate::api::{CacheReport, Change, ChangesPage, FeedHeartbeat};
use crate::error::ApiError;

/// A stream that sends nothing for this long is taken for dead (the region
/// sends a heartbeat every second).
pub const STREAM_SILENCE: Duration = Duration::from_secs(5);

/// One event of a change stream.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedItem {
    /// A change the region applied.
    Change(Box<Change>),
    /// Where the feed is: everything up to `head` was sent.
    Heartbeat(FeedHeartbeat),
    /// The reader's position is no longer served (re-read, then resume
    /// from the feed's head); the stream ends after it.
    Expired(ApiError),
}

/// An open change stream.
#[derive(Debug)]
pub struct ChangeStream {
    region: String,
    url: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl RegionClient {
    /// `GET /v1/changes`: the changes after `after` (a position, `head`, or
    /// `None` for everything the feed keeps), of `class` only when given,
    /// waiting up to `wait_ms` for one when there is none yet.
    pub async fn changes(
        &self,
        after: Option<&str>,
        class: Option<&str>,
        limit: Option<usize>,
        wait_ms: Option<u64>,
    ) -> Result<ChangesPage, ClientError> {
        let limit = limit.map(|l| l.to_string());
        let wait = wait_ms.map(|w| w.to_string());
        let path = format!(
            "/v1/changes{}",
            query(&[
                ("after", after),
                ("class", class),
                ("limit", limit.as_deref()),
                ("wait_ms", wait.as_deref()),
            ])
        );
        self.call(Method::GET, &path, Auth::Client, None, None)
            .await
    }

    /// `GET /v1/changes/stream`: opens a stream of the changes after
    /// `after` (as for [`RegionClient::changes`]).
    pub async fn stream_changes(
        &self,
        after: Option<&str>,
        class: Option<&str>,
    ) -> Result<ChangeStream, ClientError> {
        let path = format!(
            "/v1/changes/stream{}",
            query(&[("after", after), ("class", class)])
        );
        let url = format!("{}{path}", self.base);
        // No overall timeout: the stream lasts; the answer's head must come
        // in time, and then something every second.
        let mut req = self.request(&Method::GET, &url, Auth::Client, None);
        req = req.timeout(Duration::from_secs(60 * 60 * 24 * 365));
        let unreachable = |cause: String, maybe: bool| ClientError::Unreachable {
            region: self.region.clone(),
            url: url.clone(),
            cause,
            maybe_applied: maybe,
        };
        let response = match tokio::time::timeout(self.timeout, req.send()).await {
            Err(_) => {
                return Err(unreachable(
                    format!("no answer within {} ms", self.timeout.as_millis()),
                    false,
                ));
            }
            Ok(Err(e)) => return Err(unreachable(crate::transport::error_chain(&e), false)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(ClientError::Refused {
                region: self.region.clone(),
                method: "GET".into(),
                url,
                error: Box::new(super::api_error(status, &body)),
            });
        }
        Ok(ChangeStream {
            region: self.region.clone(),
            url,
            response,
            buffer: Vec::new(),
        })
    }
}

impl RegionClient {
    /// `POST /v1/cache-reports`: records a cache's window of reads in the
    /// region's `cache_reads` table.
    pub async fn report_cache(&self, report: &CacheReport) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                "/v1/cache-reports",
                Auth::Client,
                None,
                Some(super::json_body(report)?),
            )
            .await?;
        Ok(())
    }
}

impl ChangeStream {
    /// The next event; `Ok(None)` when the region ended the stream (it is
    /// stopping), an error when the connection failed or went silent for
    /// [`STREAM_SILENCE`].
    pub async fn next(&mut self) -> Result<Option<FeedItem>, ClientError> {
        loop {
            if let Some(block) = take_block(&mut self.buffer) {
                if let Some(item) = self.parse(&block)? {
                    return Ok(Some(item));
                }
                continue;
            }
            let chunk = match tokio::time::timeout(STREAM_SILENCE, self.response.chunk()).await {
                Err(_) => {
                    return Err(self.unreachable(format!(
                        "the change stream sent nothing for {} s",
                        STREAM_SILENCE.as_secs()
                    )));
                }
                Ok(Err(e)) => return Err(self.unreachable(crate::transport::error_chain(&e))),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(c))) => c,
            };
            self.buffer.extend_from_slice(&chunk);
        }
    }

    fn unreachable(&self, cause: String) -> ClientError {
        ClientError::Unreachable {
            region: self.region.clone(),
            url: self.url.clone(),
            cause,
            maybe_applied: false,
        }
    }

    /// One event block; `None` for comments (keep-alives) and unknown events.
    fn parse(&self, block: &str) -> Result<Option<FeedItem>, ClientError> {
        let mut event = "message";
        let mut data = String::new();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value,
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
        let bad = |e: serde_json::Error| ClientError::BadAnswer {
            region: self.region.clone(),
            url: self.url.clone(),
            cause: format!("a `{event}` event that is not what the feed sends: {e}"),
        };
        Ok(match event {
            "change" => Some(FeedItem::Change(Box::new(
                serde_json::from_str(&data).map_err(bad)?,
            ))),
            "heartbeat" => Some(FeedItem::Heartbeat(
                serde_json::from_str(&data).map_err(bad)?,
            )),
            "expired" => Some(FeedItem::Expired(serde_json::from_str(&data).map_err(bad)?)),
            _ => None,
        })
    }
}

/// Takes the first whole event block (up to a blank line) off `buffer`.
fn take_block(buffer: &mut Vec<u8>) -> Option<String> {
    let text = buffer.as_slice();
    let (end, sep) = [&b"\n\n"[..], b"\r\n\r\n"]
        .iter()
        .filter_map(|sep| {
            text.windows(sep.len())
                .position(|w| w == *sep)
                .map(|p| (p, sep.len()))
        })
        .min()?;
    let block = String::from_utf8_lossy(&text[..end]).into_owned();
    buffer.drain(..end + sep);
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::take_block;

    #[test]
    fn blocks_split_at_blank_lines_whatever_the_chunks() {
        let mut b = b"event: change\nid: 3\ndata: {}\n\n:keep\n\nevent: hea".to_vec();
        assert_eq!(
            take_block(&mut b).unwrap(),
            "event: change\nid: 3\ndata: {}"
        );
        assert_eq!(take_block(&mut b).unwrap(), ":keep");
        assert_eq!(take_block(&mut b), None);
        b.extend_from_slice(b"rtbeat\r\ndata: 1\r\n\r\n");
        assert_eq!(take_block(&mut b).unwrap(), "event: heartbeat\r\ndata: 1");
        assert!(b.is_empty());
    }
}
