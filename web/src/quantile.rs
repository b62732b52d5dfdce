//! `approx_quantile(value, q)`: the SQL aggregate the dashboards and SLOs
//! use for percentiles, from the log-bucketed histogram of
//! [`parallax_core::histogram`] (within 1/128 of the value of that rank);
//! and `quantile_state(value)`, the histogram itself as bytes.
//!
//! Either takes numbers, or histograms as bytes (the rollups' `latency_us`
//! and `lag_ms` columns, or `quantile_state` of raw rows), which it merges:
//! histograms add exactly, so `approx_quantile` over a rollup's 5-minute
//! histograms answers as it would over the raw rows they counted.
//!
//! Counting a value is a shift and an increment, where DataFusion's
//! `approx_percentile_cont` sorts every batch into a t-digest: over 11 M
//! latencies grouped into 5-minute buckets it was the larger part of the
//! query (measured by `parallax bench query`).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Schema};
use datafusion::common::{Result, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator,
    Signature, Volatility,
};
use datafusion::physical_plan::PhysicalExpr;
use parallax_core::histogram::Histogram;

/// `approx_quantile`, to register with a `SessionContext`.
pub(crate) fn udaf() -> AggregateUDF {
    AggregateUDF::from(ApproxQuantile {
        signature: Signature::user_defined(Volatility::Immutable),
        output: Output::Quantile,
    })
}

/// `quantile_state`, to register with a `SessionContext`.
pub(crate) fn state_udaf() -> AggregateUDF {
    AggregateUDF::from(ApproxQuantile {
        signature: Signature::user_defined(Volatility::Immutable),
        output: Output::State,
    })
}

/// What a call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    /// `approx_quantile(value, q)`: the quantile.
    Quantile,
    /// `quantile_state(value)`: the histogram as bytes.
    State,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ApproxQuantile {
    signature: Signature,
    output: Output,
}

const USAGE: &str = "approx_quantile(value, q) takes a number (or a rollup's histogram column) \
                     and a constant q between 0 and 1, like approx_quantile(latency_us, 0.99)";
const STATE_USAGE: &str = "quantile_state(value) takes a number or a histogram column, \
                           like quantile_state(latency_us)";

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// What a value argument is read as: numbers as Float64, histograms as Binary.
fn value_type(t: &DataType) -> Option<DataType> {
    if is_binary(t) {
        Some(DataType::Binary)
    } else if t.is_numeric() || t.is_null() {
        Some(DataType::Float64)
    } else {
        None
    }
}

impl AggregateUDFImpl for ApproxQuantile {
    fn name(&self) -> &str {
        match self.output {
            Output::Quantile => "approx_quantile",
            Output::State => "quantile_state",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let listed = || {
            arg_types
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.output, arg_types) {
            (Output::Quantile, [v, q]) if q.is_numeric() || q.is_null() => match value_type(v) {
                Some(v) => Ok(vec![v, DataType::Float64]),
                None => plan_err!("{USAGE}; it was given ({})", listed()),
            },
            (Output::State, [v]) => match value_type(v) {
                Some(v) => Ok(vec![v]),
                None => plan_err!("{STATE_USAGE}; it was given ({})", listed()),
            },
            (Output::Quantile, _) => plan_err!("{USAGE}; it was given ({})", listed()),
            (Output::State, _) => plan_err!("{STATE_USAGE}; it was given ({})", listed()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.output {
            Output::Quantile => DataType::Float64,
            Output::State => DataType::Binary,
        })
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "histogram"),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(One {
            q: self.quantile_arg(&args)?,
            hist: Histogram::default(),
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups {
            q: self.quantile_arg(&args)?,
            groups: Vec::new(),
            bytes: 0,
        }))
    }
}

impl ApproxQuantile {
    /// The constant `q` of an `approx_quantile` call, checked; `None` for
    /// `quantile_state`.
    fn quantile_arg(&self, args: &AccumulatorArgs<'_>) -> Result<Option<f64>> {
        if self.output == Output::State {
            return Ok(None);
        }
        let expr: &Arc<dyn PhysicalExpr> = args
            .exprs
            .get(1)
            .ok_or_else(|| plan_datafusion_err!("{USAGE}; q is missing"))?;
        let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
        let Ok(ColumnarValue::Scalar(ScalarValue::Float64(Some(q)))) = expr.evaluate(&empty) else {
            return plan_err!("{USAGE}; q must be a constant, not `{expr}`");
        };
        if !(0.0..=1.0).contains(&q) {
            return plan_err!("{USAGE}; q = {q} is outside 0..=1 (the 99th percentile is 0.99)");
        }
        Ok(Some(q))
    }
}

/// Merges a serialised histogram into `h`; returns the bytes it grew by.
fn merge(h: &mut Histogram, bytes: &[u8]) -> Result<usize> {
    h.merge_bytes(bytes)
        .map_err(|e| plan_datafusion_err!("approx_quantile: {e}"))
}

/// What a finished histogram answers: its quantile, or itself as bytes.
fn answer(h: &Histogram, q: Option<f64>) -> ScalarValue {
    match q {
        Some(q) => ScalarValue::Float64(h.quantile(q)),
        None => ScalarValue::Binary(Some(h.to_bytes())),
    }
}

/// The accumulator for an aggregate without GROUP BY (and for windows).
#[derive(Debug)]
struct One {
    /// `None` for `quantile_state`.
    q: Option<f64>,
    hist: Histogram,
}

impl Accumulator for One {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if is_binary(values[0].data_type()) {
            return self.merge_batch(values);
        }
        let values = values[0].as_primitive::<Float64Type>();
        if values.null_count() == 0 {
            self.hist.add_slice(values.values());
        } else {
            for v in values.iter().flatten() {
                self.hist.add(v);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(answer(&self.hist, self.q))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.hist.bytes()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.hist.to_bytes()))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for b in states[0].as_binary::<i32>().iter().flatten() {
            merge(&mut self.hist, b)?;
        }
        Ok(())
    }
}

/// The accumulator for GROUP BY: one histogram per group.
struct Groups {
    /// `None` for `quantile_state`.
    q: Option<f64>,
    groups: Vec<Histogram>,
    /// Heap bytes the histograms hold, kept as they grow (the memory pool
    /// asks after every batch).
    bytes: usize,
}

impl Groups {
    fn take(&mut self, emit_to: EmitTo) -> Vec<Histogram> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.bytes = self
            .bytes
            .saturating_sub(taken.iter().map(Histogram::bytes).sum());
        taken
    }

    /// Merges histograms given as bytes, one per row, into their groups.
    fn merge_rows(
        &mut self,
        states: &ArrayRef,
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups
            .resize_with(total_num_groups, Histogram::default);
        let states = states.as_binary::<i32>();
        for (i, g) in group_indices.iter().enumerate() {
            let kept = opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
            if kept && states.is_valid(i) {
                self.bytes += merge(&mut self.groups[*g], states.value(i))?;
            }
        }
        Ok(())
    }
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if is_binary(values[0].data_type()) {
            return self.merge_rows(&values[0], group_indices, opt_filter, total_num_groups);
        }
        self.groups
            .resize_with(total_num_groups, Histogram::default);
        let values = values[0].as_primitive::<Float64Type>();
        let mut grew = 0;
        if values.null_count() == 0 && opt_filter.is_none() {
            // Rows sorted by time arrive in runs of one group: count a run
            // at a time.
            let values = values.values();
            let mut start = 0;
            while let Some(&g) = group_indices.get(start) {
                let run = group_indices[start..]
                    .iter()
                    .position(|x| *x != g)
                    .unwrap_or(group_indices.len() - start);
                grew += self.groups[g].add_slice(&values[start..start + run]);
                start += run;
            }
        } else {
            for (i, g) in group_indices.iter().enumerate() {
                let kept = opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
                if kept && values.is_valid(i) {
                    grew += self.groups[*g].add(values.value(i));
                }
            }
        }
        self.bytes += grew;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = self.take(emit_to);
        Ok(match self.q {
            Some(q) => Arc::new(
                taken
                    .iter()
                    .map(|h| h.quantile(q))
                    .collect::<Float64Array>(),
            ),
            None => Arc::new(
                taken
                    .iter()
                    .map(|h| Some(h.to_bytes()))
                    .collect::<BinaryArray>(),
            ),
        })
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let out: BinaryArray = self
            .take(emit_to)
            .iter()
            .map(|h| Some(h.to_bytes()))
            .collect();
        Ok(vec![Arc::new(out)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.merge_rows(&values[0], group_indices, None, total_num_groups)
    }

    /// Each value as a histogram of its own, for DataFusion's skipping of
    /// partial aggregation when groups are nearly all distinct.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let kept = |i: usize| opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
        if is_binary(values[0].data_type()) {
            let states = values[0].as_binary::<i32>();
            let out: BinaryArray = (0..states.len())
                .map(|i| (kept(i) && states.is_valid(i)).then(|| states.value(i)))
                .collect();
            return Ok(vec![Arc::new(out)]);
        }
        let values = values[0].as_primitive::<Float64Type>();
        let out: BinaryArray = (0..values.len())
            .map(|i| {
                (kept(i) && values.is_valid(i)).then(|| {
                    let mut h = Histogram::default();
                    h.add(values.value(i));
                    h.to_bytes()
                })
            })
            .collect();
        Ok(vec![Arc::new(out)])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Histogram>() + self.bytes
    }
}
