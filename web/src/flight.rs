//! Arrow Flight SQL: the SQL console's read-only queries for BI tools
//! (DBeaver and other JDBC clients, Grafana's Flight SQL data source, ADBC
//! drivers), served by the web app on its own address beside the pages
//! (gRPC over HTTP/2, TLS when `[tls]` is set).
//!
//! A statement runs through [`SqlEngine::user_query`](crate::SqlEngine::user_query):
//! on the user-query pool, under the same limits as `POST /api/v1/sql`
//! (time, memory, rows, queries at once), so a BI tool cannot starve the
//! pages, metrics and alerts either. `GetFlightInfo` only plans the
//! statement (to answer its schema); `DoGet` runs it. Tickets and prepared
//! statement handles carry the statement itself, so the server keeps no
//! state between calls. Catalog calls (`GetCatalogs`, `GetDbSchemas`,
//! `GetTables` with their schemas, `GetTableTypes`) list the engine's
//! tables, so tools can browse them.
//!
//! Every call needs a client or admin token in force, as a bearer token
//! (`authorization: Bearer <token>`) or as the password of a basic
//! handshake (user name ignored), which answers with the bearer token.

use std::pin::Pin;
use std::sync::LazyLock;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::app::App;
use crate::sql::{CATALOG, SCHEMA, SqlError};

/// The path prefix of every Flight call (gRPC service name).
pub const FLIGHT_PATH: &str = "/arrow.flight.protocol.FlightService";

/// The Flight SQL service of `app`, ready to be routed.
pub fn service(app: App) -> FlightServiceServer<FlightSql> {
    FlightServiceServer::new(FlightSql { app })
}

/// The Flight SQL service: statements and server information.
#[derive(Debug, Clone)]
pub struct FlightSql {
    app: App,
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl FlightSql {
    /// The token of a call, if it is one in force; else why not.
    fn check(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = match header.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim().to_owned(),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => basic_password(rest)?,
            _ => {
                return Err(Status::unauthenticated(
                    "no token. Fix: send `authorization: Bearer <client or admin token>` \
                     (ADBC: adbc.flight.sql.authorization_header), or log in with any user \
                     name and the token as password",
                ));
            }
        };
        if self.app.token_ok(&token) {
            Ok(token)
        } else {
            Err(Status::unauthenticated(
                "the token is not a client or admin token of the cluster. Fix: use \
                 cluster.client_token or cluster.admin_token",
            ))
        }
    }

    /// Runs a statement; its rows as Flight data.
    async fn run(&self, sql: &str) -> Result<Response<Answers<arrow_flight::FlightData>>, Status> {
        let result = self.app.sql().user_query(sql).await.map_err(status)?;
        if result.truncated {
            return Err(Status::resource_exhausted(format!(
                "the answer has more than {} rows (web.sql_max_rows). Fix: aggregate, or add \
                 a LIMIT",
                result.num_rows()
            )));
        }
        let batches = futures::stream::iter(result.batches.into_iter().map(Ok));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(result.schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(stream.boxed()))
    }
}

/// The password of a basic `authorization` value.
fn basic_password(encoded: &str) -> Result<String, Status> {
    let bad = || Status::unauthenticated("the basic credentials are not base64 of `user:token`");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (_, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(password.to_owned())
}

/// A ticket or handle as the statement it carries.
fn statement(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Status::invalid_argument("the ticket is not a statement of this server"))
}

/// The `FlightInfo` of an answer with `schema`, fetched by `ticket`.
fn info(
    descriptor: FlightDescriptor,
    ticket: Any,
    schema: &arrow::datatypes::Schema,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// One batch of a catalog answer, as Flight data.
fn one_batch(
    schema: SchemaRef,
    batch: Result<RecordBatch, FlightError>,
) -> Response<Answers<arrow_flight::FlightData>> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async { batch }))
        .map_err(Status::from);
    Response::new(stream.boxed())
}

/// A query's failure as a gRPC status, its message the console's.
fn status(e: SqlError) -> Status {
    let message = e.to_string();
    match e {
        SqlError::Refused(_) => Status::permission_denied(message),
        SqlError::Invalid(_) => Status::invalid_argument(message),
        SqlError::Memory(_) | SqlError::TooLarge(..) | SqlError::Busy(_) => {
            Status::resource_exhausted(message)
        }
        SqlError::Timeout(_) => Status::deadline_exceeded(message),
        SqlError::Failed(_) => Status::internal(message),
    }
}

/// What `GetSqlInfo` answers.
static SERVER_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "parallax");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.build().expect("the server's SqlInfo builds")
});

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Answers<HandshakeResponse>>, Status> {
        let token = self.check(request.metadata())?;
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<Answers<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = self
            .app
            .sql()
            .user_schema(&query.query)
            .await
            .map_err(status)?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        info(request.into_inner(), ticket.as_any(), &schema)
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        self.run(&statement(&ticket.statement_handle)?).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let sql = statement(&query.prepared_statement_handle)?;
        let schema = self.app.sql().user_schema(&sql).await.map_err(status)?;
        info(request.into_inner(), query.as_any(), &schema)
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        self.run(&statement(&query.prepared_statement_handle)?)
            .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.check(request.metadata())?;
        let schema = self
            .app
            .sql()
            .user_schema(&query.query)
            .await
            .map_err(status)?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // The handle is the statement: nothing is held to let go of.
        self.check(request.metadata())?;
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let ticket = query.as_any();
        info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let ticket = query.as_any();
        info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let ticket = query.as_any();
        info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut b = query.into_builder();
        for (table, kind, schema) in self.app.sql().tables().await {
            b.append(CATALOG, SCHEMA, table, kind, &schema)
                .map_err(Status::from)?;
        }
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let ticket = query.as_any();
        info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let ticket = query.as_any();
        let schema = query.into_builder(&SERVER_INFO).schema();
        info(request.into_inner(), ticket, &schema)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(request.metadata())?;
        let builder = query.into_builder(&SERVER_INFO);
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
