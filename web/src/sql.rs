//! SQL over the collector's Parquet files, through DataFusion, read-only.
//!
//! Only the project's tables are registered (as listing tables over
//! `<data-dir>/tables/<table>/` with the `region`, `date` and `hour`
//! partition columns, so filters on them prune files). DDL, DML, `COPY`,
//! `SET` and other statements are refused by DataFusion's `SQLOptions`;
//! no function reads files (URL tables are off; only `generate_series` and
//! `range` are table functions). A memory pool bounds each query (no spill
//! to disk), and a time limit and a row limit apply; a query that breaks
//! one fails alone.
//!
//! Two ways in: [`SqlEngine::query`] for the app's own queries (dashboards,
//! alert rules), run on the caller's runtime and sharing one memory pool;
//! [`SqlEngine::user_query`] for SQL a user typed, run on a pool of
//! low-priority threads of its own with a memory pool per query and a
//! bound on how many run at once (see `pool`), so no user query can starve
//! the pages or the alerts. Either way every operator of the plan checks
//! the query's [`Stop`](crate::stop) before each batch, so a query past its
//! time limit (or one whose client went away) stops burning CPU within a
//! batch, whether or not anyone is still reading its rows.

mod pool;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, col};
use futures::StreamExt;
use serde_json::Value;

use crate::metrics::{Asker, SqlMetrics};
use crate::stop::{self, Stop};
use crate::time::rfc3339_micros;
use pool::{Pool, QUEUE_WAIT};

/// Limits of one query.
#[derive(Clone, Debug)]
pub struct SqlLimits {
    /// Memory a query may hold (bytes).
    pub memory_bytes: usize,
    /// Time a query may run.
    pub timeout: Duration,
    /// Rows returned at most (more are cut off, and said so).
    pub max_rows: usize,
    /// Longest SQL text accepted (bytes).
    pub max_sql_bytes: usize,
    /// User queries ([`SqlEngine::user_query`]) running at once at most.
    pub max_concurrent: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            max_sql_bytes: 64 << 10,
            max_concurrent: 4,
        }
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement is not a read-only query of the project's tables.
    #[error("{0}")]
    Refused(String),
    /// The query is not valid (syntax, unknown column, type error ...).
    #[error("{0}")]
    Invalid(String),
    /// The query needed more memory than the limit.
    #[error(
        "the query needed more than the {0} MiB memory limit. Fix: filter on ts, region, date or hour, aggregate earlier, or add LIMIT"
    )]
    Memory(usize),
    /// The query ran longer than the limit.
    #[error(
        "the query ran longer than the {0} s time limit and was stopped. Fix: filter on ts, region, date or hour to read fewer rows, give every join an ON condition, or raise web.sql_timeout_ms"
    )]
    Timeout(u64),
    /// The SQL text is longer than the limit (its length, the limit).
    #[error(
        "the query is {0} bytes, over the {1}-byte limit. Fix: shorten it (select fewer columns by name, move long IN lists into a filter on a partition column)"
    )]
    TooLarge(usize, usize),
    /// As many user queries as the bound allows were running (the bound).
    #[error(
        "{0} SQL queries were running already, the most web.sql_max_concurrent allows, and none finished within {wait} s. Fix: retry in a few seconds (a query runs at most web.sql_timeout_ms), or raise web.sql_max_concurrent",
        wait = QUEUE_WAIT.as_secs()
    )]
    Busy(usize),
    /// Something else failed while running it.
    #[error("the query failed: {0}")]
    Failed(String),
}

impl SqlError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            SqlError::Refused(_) => 403,
            SqlError::Invalid(_) => 400,
            SqlError::Memory(_) => 422,
            SqlError::Timeout(_) => 408,
            SqlError::TooLarge(..) => 413,
            SqlError::Busy(_) => 503,
            SqlError::Failed(_) => 500,
        }
    }

    /// Short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Refused(_) => "refused",
            SqlError::Invalid(_) => "invalid_query",
            SqlError::Memory(_) => "memory_limit",
            SqlError::Timeout(_) => "time_limit",
            SqlError::TooLarge(..) => "too_large",
            SqlError::Busy(_) => "busy",
            SqlError::Failed(_) => "query_failed",
        }
    }
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Columns.
    pub schema: SchemaRef,
    /// Rows, in batches.
    pub batches: Vec<RecordBatch>,
    /// Whether rows past the limit were cut off.
    pub truncated: bool,
    /// Time taken.
    pub elapsed: Duration,
}

impl QueryResult {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Column names.
    pub fn columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Rows as JSON arrays of typed values.
    pub fn json_rows(&self) -> Vec<Vec<Value>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for b in &self.batches {
            for r in 0..b.num_rows() {
                out.push(b.columns().iter().map(|c| json_value(c, r)).collect());
            }
        }
        out
    }

    /// Rows as CSV with a header line.
    pub fn csv(&self) -> Result<Vec<u8>, SqlError> {
        let mut out = Vec::new();
        {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for b in &self.batches {
                w.write(b)
                    .map_err(|e| SqlError::Failed(format!("cannot write CSV: {e}")))?;
            }
        }
        if self.batches.is_empty() {
            out.extend(self.columns().join(",").bytes());
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Rows as an Arrow IPC stream.
    pub fn arrow_ipc(&self) -> Result<Vec<u8>, SqlError> {
        let mut out = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &self.schema)
            .map_err(|e| SqlError::Failed(format!("cannot write Arrow IPC: {e}")))?;
        for b in &self.batches {
            w.write(b)
                .map_err(|e| SqlError::Failed(format!("cannot write Arrow IPC: {e}")))?;
        }
        w.finish()
            .map_err(|e| SqlError::Failed(format!("cannot write Arrow IPC: {e}")))?;
        drop(w);
        Ok(out)
    }
}

/// One cell as JSON: numbers as numbers, timestamps as RFC 3339 text.
pub fn json_value(col: &ArrayRef, row: usize) -> Value {
    if col.is_null(row) {
        return Value::Null;
    }
    macro_rules! prim {
        ($t:ty) => {
            Value::from(col.as_primitive::<$t>().value(row))
        };
    }
    use arrow::datatypes as t;
    match col.data_type() {
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int8 => prim!(t::Int8Type),
        DataType::Int16 => prim!(t::Int16Type),
        DataType::Int32 => prim!(t::Int32Type),
        DataType::Int64 => prim!(t::Int64Type),
        DataType::UInt8 => prim!(t::UInt8Type),
        DataType::UInt16 => prim!(t::UInt16Type),
        DataType::UInt32 => prim!(t::UInt32Type),
        DataType::UInt64 => prim!(t::UInt64Type),
        DataType::Float32 => prim!(t::Float32Type),
        DataType::Float64 => {
            let v = col.as_primitive::<t::Float64Type>().value(row);
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        DataType::Utf8 => Value::from(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Value::from(col.as_string::<i64>().value(row)),
        DataType::Utf8View => Value::from(col.as_string_view().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Value::from(rfc3339_micros(
            col.as_primitive::<t::TimestampMicrosecondType>().value(row),
        )),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Value::from(rfc3339_micros(
            col.as_primitive::<t::TimestampNanosecondType>().value(row) / 1_000,
        )),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Value::from(rfc3339_micros(
            col.as_primitive::<t::TimestampMillisecondType>().value(row) * 1_000,
        )),
        DataType::Timestamp(TimeUnit::Second, _) => Value::from(rfc3339_micros(
            col.as_primitive::<t::TimestampSecondType>().value(row) * 1_000_000,
        )),
        DataType::List(_) => {
            let list = col.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| json_value(&list, i)).collect())
        }
        DataType::Dictionary(_, _) => {
            let s = arrow::compute::cast(&col.slice(row, 1), &DataType::Utf8);
            s.map(|s| json_value(&s, 0)).unwrap_or(Value::Null)
        }
        _ => arrow::util::display::array_value_to_string(col, row)
            .map(Value::from)
            .unwrap_or(Value::Null),
    }
}

/// A read-only SQL engine over one data directory's tables.
#[derive(Clone)]
pub struct SqlEngine {
    ctx: SessionContext,
    limits: SqlLimits,
    root: PathBuf,
    users: Arc<Pool>,
    metrics: SqlMetrics,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine")
            .field("root", &self.root)
            .finish()
    }
}

fn classify(e: DataFusionError, limits: &SqlLimits) -> SqlError {
    if stop::is_stopped(&e) {
        return SqlError::Timeout(limits.timeout.as_secs());
    }
    let text = e.to_string();
    let root = e.find_root();
    if matches!(root, DataFusionError::ResourcesExhausted(_))
        || text.contains("Resources exhausted")
    {
        return SqlError::Memory(limits.memory_bytes >> 20);
    }
    if text.contains("not supported")
        && (text.contains("DDL") || text.contains("DML") || text.contains("Statement"))
    {
        return SqlError::Refused(format!(
            "only read-only queries (SELECT, WITH, EXPLAIN) over the parallax tables are allowed: {text}"
        ));
    }
    match root {
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => {
            let hint = if text.contains("table") && text.contains("not found") {
                format!(
                    ". The tables are: {}, and their rollups {}",
                    parallax_collector::tables::TABLES.join(", "),
                    parallax_collector::rollup::ROLLUPS.join(", ")
                )
            } else {
                String::new()
            };
            SqlError::Invalid(format!("{text}{hint}"))
        }
        _ => SqlError::Failed(text),
    }
}

impl SqlEngine {
    /// An engine over `<data_dir>/tables`.
    pub async fn open(data_dir: &Path, limits: SqlLimits) -> Result<SqlEngine, SqlError> {
        SqlEngine::open_at(&data_dir.join("tables"), None, limits).await
    }

    /// An engine over the tables under `root`: a folder, or with `bucket`
    /// the key prefix in it (read through
    /// [`Bucket::reader`](parallax_collector::bucket::Bucket::reader), so a
    /// compaction's replaced files are never read twice).
    pub async fn open_at(
        root: &Path,
        bucket: Option<&parallax_collector::bucket::Bucket>,
        limits: SqlLimits,
    ) -> Result<SqlEngine, SqlError> {
        let root = root.to_owned();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            // DataFusion keeps directory listings forever by default; the
            // collector adds files every flush and compaction swaps them, so
            // every query lists the directories afresh.
            .with_object_list_cache_limit(0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| SqlError::Failed(e.to_string()))?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            .set_bool("datafusion.execution.parquet.reorder_filters", true);
        if let Some(b) = bucket {
            let url = datafusion::execution::object_store::ObjectStoreUrl::parse(b.store_url())
                .map_err(|e| SqlError::Failed(format!("cannot use {}: {e}", b.url())))?;
            runtime.register_object_store(url.as_ref(), b.reader());
        }
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        ctx.register_udaf(crate::quantile::udaf());
        ctx.register_udaf(crate::quantile::state_udaf());
        let rollups = parallax_collector::rollup::ROLLUPS;
        for table in parallax_collector::tables::TABLES
            .into_iter()
            .chain(rollups)
        {
            let dir = root.join(table);
            let url = match bucket {
                Some(b) => format!("{}/{}/", b.store_url(), dir.display()),
                None => {
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        SqlError::Failed(format!("cannot create {}: {e}", dir.display()))
                    })?;
                    format!("{}/", dir.display())
                }
            };
            // Rollups are partitioned by region and date only.
            let mut partitions = vec![
                ("region".to_owned(), DataType::Utf8),
                ("date".to_owned(), DataType::Date32),
            ];
            if !rollups.contains(&table) {
                partitions.push(("hour".to_owned(), DataType::Int32));
            }
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partitions)
                .with_file_sort_order(vec![vec![col("ts").sort(true, false)]]);
            let schema = string_views(
                &parallax_collector::tables::schema_of(table)
                    .or_else(|| parallax_collector::rollup::schema_of(table))
                    .expect("a known table"),
            );
            let name = if table == "divergence" {
                DIVERGENCE_FILES
            } else {
                table
            };
            ctx.register_listing_table(name, &url, options, Some(schema), None)
                .await
                .map_err(|e| SqlError::Failed(format!("cannot register table {table}: {e}")))?;
        }
        register_divergence_view(&ctx).await?;
        let users = Arc::new(Pool::new(limits.max_concurrent)?);
        Ok(SqlEngine {
            ctx,
            limits,
            root,
            users,
            metrics: SqlMetrics::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// The counts of the queries run.
    pub fn metrics(&self) -> &SqlMetrics {
        &self.metrics
    }

    /// Runs one of the app's own read-only queries (a dashboard's, an alert
    /// rule's) on the caller's runtime.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let counted = self.metrics.begin(Asker::App);
        let answer = self.app_query(sql).await;
        counted.ended(outcome(&answer));
        if let Ok(r) = &answer {
            // What a page's time goes to (`PARALLAX_LOG=parallax_web::sql=debug`).
            tracing::debug!(
                elapsed_ms = r.elapsed.as_millis() as u64,
                rows = r.num_rows(),
                sql,
                "app query"
            );
        }
        answer
    }

    async fn app_query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let started = Instant::now();
        check_text(sql, &self.limits)?;
        let stop = Stop::after(self.limits.timeout);
        let answer = run(&self.ctx, sql, &self.limits, &stop, None);
        let (schema, batches, truncated) = tokio::time::timeout(self.limits.timeout, answer)
            .await
            .map_err(|_| SqlError::Timeout(self.limits.timeout.as_secs()))??;
        Ok(QueryResult {
            schema,
            batches,
            truncated,
            elapsed: started.elapsed(),
        })
    }

    /// Runs one read-only query a user typed, on the user-query pool with
    /// a memory pool of its own. The time limit covers planning as well as
    /// running. Dropping the returned future (the client went away) stops
    /// the query; so does its time limit, whether or not it is awaited.
    pub async fn user_query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let counted = self.metrics.begin(Asker::User);
        let answer = self.run_user_query(sql).await;
        counted.ended(outcome(&answer));
        answer
    }

    /// Every table and view a query can read, with its kind (`TABLE` or
    /// `VIEW`) and columns, by name: what Flight SQL's `GetTables` lists.
    pub async fn tables(
        &self,
    ) -> Vec<(String, &'static str, datafusion::arrow::datatypes::Schema)> {
        let Some(schema) = self.ctx.catalog(CATALOG).and_then(|c| c.schema(SCHEMA)) else {
            return Vec::new();
        };
        let mut names = schema.table_names();
        names.sort();
        let mut tables = Vec::new();
        for name in names {
            let Ok(Some(table)) = schema.table(&name).await else {
                continue;
            };
            let kind = match table.table_type() {
                datafusion::datasource::TableType::View => "VIEW",
                _ => "TABLE",
            };
            tables.push((name, kind, table.schema().as_ref().clone()));
        }
        tables
    }

    /// The columns a user query would answer, from planning it alone
    /// (Flight SQL's `GetFlightInfo`): the same checks as
    /// [`SqlEngine::user_query`], within its time limit, nothing run.
    pub async fn user_schema(&self, sql: &str) -> Result<SchemaRef, SqlError> {
        check_text(sql, &self.limits)?;
        let planned = self.ctx.sql_with_options(sql, read_only());
        let df = tokio::time::timeout(self.limits.timeout, planned)
            .await
            .map_err(|_| SqlError::Timeout(self.limits.timeout.as_secs()))?
            .map_err(|e| classify(e, &self.limits))?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }

    async fn run_user_query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let started = Instant::now();
        check_text(sql, &self.limits)?;
        let slot = self.users.admit().await?;
        let stop = Stop::after(self.limits.timeout);
        let (ctx, limits, sql) = (self.ctx.clone(), self.limits.clone(), sql.to_owned());
        let memory = self.memory_of_one_query();
        let inside = Arc::clone(&stop);
        let running = self.users.spawn(stop, async move {
            let answer = run(&ctx, &sql, &limits, &inside, Some(memory)).await;
            drop(slot);
            answer
        });
        let (schema, batches, truncated) = tokio::time::timeout(self.limits.timeout, running)
            .await
            .map_err(|_| SqlError::Timeout(self.limits.timeout.as_secs()))???;
        Ok(QueryResult {
            schema,
            batches,
            truncated,
            elapsed: started.elapsed(),
        })
    }

    /// The engine's runtime with a memory pool of `memory_bytes` for one
    /// query alone: a user query that fills its pool fails by itself and
    /// leaves the dashboards' pool alone.
    fn memory_of_one_query(&self) -> Arc<RuntimeEnv> {
        let base = self.ctx.runtime_env();
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(self.limits.memory_bytes),
            NonZeroUsize::new(5).expect("5 is not 0"),
        );
        Arc::new(RuntimeEnv {
            memory_pool: Arc::new(pool),
            ..RuntimeEnv::clone(&base)
        })
    }
}

/// How a query ended, as the metrics count it: `ok` or the error's code.
fn outcome(answer: &Result<QueryResult, SqlError>) -> &'static str {
    answer.as_ref().map_or_else(SqlError::code, |_| "ok")
}

/// Refuses an empty query and one over the length limit.
fn check_text(sql: &str, limits: &SqlLimits) -> Result<(), SqlError> {
    if sql.trim().is_empty() {
        return Err(SqlError::Invalid(
            "the query is empty. Fix: send e.g. SELECT count(*) FROM requests".into(),
        ));
    }
    if sql.len() > limits.max_sql_bytes {
        return Err(SqlError::TooLarge(sql.len(), limits.max_sql_bytes));
    }
    Ok(())
}

/// A query's columns, its batches (at most `max_rows` rows) and whether
/// rows were cut off.
type Rows = (SchemaRef, Vec<RecordBatch>, bool);

/// Plans and runs `sql`, every operator checking `stop`; `memory` replaces
/// the engine's memory pool for this query.
/// The catalog and schema the tables are registered in (DataFusion's
/// defaults).
pub const CATALOG: &str = "datafusion";
/// See [`CATALOG`].
pub const SCHEMA: &str = "public";

/// SQL that reads: no DDL, no DML, no `SET` and the like.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

async fn run(
    ctx: &SessionContext,
    sql: &str,
    limits: &SqlLimits,
    stop: &Arc<Stop>,
    memory: Option<Arc<RuntimeEnv>>,
) -> Result<Rows, SqlError> {
    let fail = |e| classify(e, limits);
    let df = ctx.sql_with_options(sql, read_only()).await.map_err(fail)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let plan = df.create_physical_plan().await.map_err(fail)?;
    let plan = stop::guard(plan, stop).map_err(fail)?;
    let mut task = df.task_ctx();
    if let Some(memory) = memory {
        task = task.with_runtime(memory);
    }
    let mut stream =
        datafusion::physical_plan::execute_stream(plan, Arc::new(task)).map_err(fail)?;
    let mut batches = Vec::new();
    let mut rows = 0;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(fail)?;
        let room = limits.max_rows - rows;
        if batch.num_rows() > room {
            batches.push(batch.slice(0, room));
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
        if rows == limits.max_rows {
            truncated = stream.next().await.is_some();
            break;
        }
    }
    Ok((schema, batches, truncated))
}

/// Where `divergence` rows are read from before [`register_divergence_view`]
/// hides the files behind the view.
const DIVERGENCE_FILES: &str = "divergence_files";

/// Registers `divergence` as a view over its files that reads rows of the
/// first releases, whose `state` was `divergent: <reason>` and which had
/// no `reason` column, as one word plus the reason. The files' own table
/// is then dropped from the catalog: users see one `divergence` table.
async fn register_divergence_view(ctx: &SessionContext) -> Result<(), SqlError> {
    let failed = |e: DataFusionError| SqlError::Failed(format!("cannot register divergence: {e}"));
    let plan = ctx
        .sql(&format!(
            "SELECT ts, audit_id, class, key, regions, \
             CASE WHEN state LIKE '%:%' THEN split_part(state, ':', 1) ELSE state END AS state, \
             coalesce(reason, CASE WHEN state LIKE '%:%' THEN regexp_replace(state, '^[^:]*:\\s*', '') ELSE '' END) AS reason, \
             first_seen, age_ms, region, date, hour FROM {DIVERGENCE_FILES}"
        ))
        .await
        .map_err(failed)?
        .into_unoptimized_plan();
    ctx.deregister_table(DIVERGENCE_FILES).map_err(failed)?;
    ctx.register_table(
        "divergence",
        Arc::new(datafusion::catalog::view::ViewTable::new(plan, None)),
    )
    .map_err(failed)?;
    Ok(())
}

/// The table's schema with text columns read as string views: short
/// strings (region, class, op names) stay inline in the view, so reading a
/// page copies no bytes and GROUP BY compares them as integers.
fn string_views(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Whether a data type holds text (for table rendering).
pub fn is_text(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}
