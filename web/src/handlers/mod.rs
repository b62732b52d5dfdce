//! The request handlers, one module per area, each with its routes.
//! Handlers answer with their data or a [`WebError`](crate::WebError);
//! pages with a [`PageAnswer`](crate::error::PageAnswer) or an
//! [`ErrorPage`](crate::error::ErrorPage).

mod admin;
pub(crate) mod alerts;
pub(crate) mod dashboards;
pub(crate) mod repair;
pub(crate) mod sql;
