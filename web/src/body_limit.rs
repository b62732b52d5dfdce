//! The bound on request bodies: at most [`MAX_BODY_BYTES`], read before a
//! route sees them, and a 413 naming the limit and the fix past it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;

use crate::app::App;
use crate::error::WebError;

/// The largest request body the app takes.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of a too-large body is read (and dropped) before the 413.
const MAX_DRAIN_BYTES: usize = 64 << 20;

/// Reads a request body of at most [`MAX_BODY_BYTES`] before the route
/// sees it; a larger one is answered 413 naming the limit and the fix.
/// The rest of a too-large body is read and dropped first (up to
/// [`MAX_DRAIN_BYTES`]): a server that answers before the client has sent
/// everything closes a socket with unread bytes in it, which the kernel
/// turns into a reset, and the client sees the reset instead of the 413.
pub(crate) async fn limit_body(
    State(app): State<App>,
    req: Request,
    next: Next,
) -> Result<Response, WebError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return Err(too_large(&app));
    }
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut read = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| WebError::BodyUnreadable)?;
        read += chunk.len();
        if read <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if read > MAX_DRAIN_BYTES {
            return Err(too_large(&app));
        }
    }
    if read > MAX_BODY_BYTES {
        return Err(too_large(&app));
    }
    Ok(next.run(Request::from_parts(parts, Body::from(kept))).await)
}

/// 413, naming the body limit and the SQL text limit.
pub(crate) fn too_large(app: &App) -> WebError {
    WebError::TooLarge {
        body_mib: MAX_BODY_BYTES >> 20,
        sql_kib: app.sql().limits().max_sql_bytes >> 10,
    }
}
