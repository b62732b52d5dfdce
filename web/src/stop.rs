//! Stopping a running query from the outside: at its time limit, or when
//! whoever asked for it went away.
//!
//! Dropping a query's stream is not enough on its own: an operator working
//! from memory (a cross join pairing buffered rows, a `generate_series`)
//! can run for minutes inside one poll without reaching an `.await`, so
//! neither a timeout around the consumer nor a task abort gets a chance.
//! [`guard`] therefore puts a check on every operator's output stream:
//! each batch any operator asks of its input first asks the [`Stop`], and
//! once it says stop the pipeline unwinds with an error within one batch.
//! The wrapper is transparent (same name, children, metrics, downcast
//! identity), so `EXPLAIN ANALYZE` and the operators that look at their
//! inputs see the plan they planned.

use std::any::Any;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Statistics;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{
    ChildStats, ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan,
    InputDistributionRequirements, PhysicalExpr, PlanProperties, ReplaceChildrenOptions,
    StatisticsArgs,
};
use futures::{Stream, StreamExt};

/// When one query must stop: a deadline, or a cancel from outside.
#[derive(Debug)]
pub(crate) struct Stop {
    deadline: Instant,
    cancelled: AtomicBool,
}

impl Stop {
    /// A query that may run for `limit` from now.
    pub(crate) fn after(limit: Duration) -> Arc<Stop> {
        Arc::new(Stop {
            deadline: Instant::now() + limit,
            cancelled: AtomicBool::new(false),
        })
    }

    /// Stops the query at its next batch.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether the query must stop now.
    pub(crate) fn stopped(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// The error a stopped operator returns ([`is_stopped`] recognises it).
#[derive(Debug, thiserror::Error)]
#[error("the query was stopped (time limit or cancel)")]
struct Stopped;

/// Whether `e` (anywhere in its chain) is a [`Stop`] taking effect.
pub(crate) fn is_stopped(e: &DataFusionError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<Stopped>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// `plan` with every operator's output checked against `stop`.
pub(crate) fn guard(
    plan: Arc<dyn ExecutionPlan>,
    stop: &Arc<Stop>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(Transformed::yes(Arc::new(StopExec {
            inner: node,
            stop: Arc::clone(stop),
        }) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// One operator, its output checked against a [`Stop`]. Its children are
/// the operator's own (themselves wrapped), so it adds no level to the tree.
struct StopExec {
    inner: Arc<dyn ExecutionPlan>,
    stop: Arc<Stop>,
}

impl StopExec {
    fn wrap(&self, inner: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(StopExec {
            inner,
            stop: Arc::clone(&self.stop),
        })
    }
}

impl std::fmt::Debug for StopExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.inner, f)
    }
}

impl DisplayAs for StopExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for StopExec {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.inner.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.inner.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.inner.maintains_input_order()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.inner.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inner.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self.wrap(Arc::clone(&self.inner).replace_children(children, options)?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    // A recursive query resets its recursive term before each round and
    // hands it the work table: both must reach the operator inside.
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self.wrap(Arc::clone(&self.inner).reset_state()?))
    }

    fn with_new_state(&self, state: Arc<dyn Any + Send + Sync>) -> Option<Arc<dyn ExecutionPlan>> {
        self.inner.with_new_state(state).map(|p| self.wrap(p))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if self.stop.stopped() {
            return Err(DataFusionError::External(Box::new(Stopped)));
        }
        Ok(Box::pin(StopStream {
            inner: Some(self.inner.execute(partition, context)?),
            schema: self.inner.schema(),
            stop: Arc::clone(&self.stop),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.inner.statistics_from_inputs(input_stats, args)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.inner.child_stats_requests(partition)
    }

    fn fetch(&self) -> Option<usize> {
        self.inner.fetch()
    }
}

/// An operator's output that asks the [`Stop`] before each batch; once
/// stopped it drops the operator's stream (and with it the tasks it
/// spawned) and answers one error, then the end.
struct StopStream {
    inner: Option<SendableRecordBatchStream>,
    schema: SchemaRef,
    stop: Arc<Stop>,
}

impl Stream for StopStream {
    type Item = Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.stop.stopped() {
            this.inner = None;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(Stopped)))));
        }
        inner.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for StopStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_holds_until_its_deadline_or_a_cancel() {
        let s = Stop::after(Duration::from_secs(3600));
        assert!(!s.stopped());
        s.cancel();
        assert!(s.stopped());
        assert!(Stop::after(Duration::ZERO).stopped());
    }

    #[test]
    fn the_stop_error_is_recognised_through_wrapping() {
        let e = DataFusionError::External(Box::new(Stopped));
        assert!(is_stopped(&e));
        let shared = DataFusionError::Shared(Arc::new(e)).context("in a repartition");
        assert!(is_stopped(&shared));
        assert!(!is_stopped(&DataFusionError::Execution("other".into())));
    }
}
