//! The Usage page: usage and costs over an hour, a day or 30 days, as a
//! time series and as the top groups (tenant, model or key), each a chart
//! beside a table of the same numbers; every group as CSV.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use maas_core::Timestamp;
use maas_core::usage::{Granularity, GroupBy, TimeRange, UsageScope, UsageSummary};
use serde::Deserialize;

use super::chart::{Chart, bars};
use super::pages::{failed, render};
use super::{Operator, Ui};

/// Rows of the top table (and bars of its chart).
const TOP: usize = 20;

/// The ranges offered: query value, name, length in ms, series step.
const RANGES: &[(&str, &str, i64, Granularity)] = &[
    ("hour", "last hour", 3_600_000, Granularity::Minute),
    ("day", "last 24 hours", 86_400_000, Granularity::Hour),
    ("30d", "last 30 days", 30 * 86_400_000, Granularity::Day),
];

/// The page's query: `range` (`hour`, `day`, `30d`) and `group` (`tenant`,
/// `model`, `key`).
#[derive(Debug, Deserialize)]
pub(crate) struct UsageParams {
    #[serde(default = "day")]
    range: String,
    #[serde(default = "model")]
    group: String,
}

fn day() -> String {
    "day".into()
}

fn model() -> String {
    "model".into()
}

/// One row of a table (and one bar).
pub(crate) struct Row {
    label: String,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    errors: u64,
    cost: String,
}

impl Row {
    fn of(label: String, u: &UsageSummary) -> Row {
        Row {
            label,
            requests: u.requests,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            errors: u.errors,
            cost: format!("{:.6}", u.cost("USD")),
        }
    }

    fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

#[derive(Template)]
#[template(path = "ui/usage.html")]
struct UsagePage {
    title: &'static str,
    ranges: Vec<(&'static str, &'static str)>,
    range: String,
    group: String,
    csv: String,
    series_chart: Chart,
    series: Vec<Row>,
    top_chart: Chart,
    top: Vec<Row>,
    groups: usize,
}

/// What the query asks for: the range, its step, the grouping; or why it
/// cannot be served (a 400).
fn parse(
    p: &UsageParams,
    now: Timestamp,
) -> Result<(TimeRange, Granularity, GroupBy), &'static str> {
    let Some(&(_, _, len, step)) = RANGES.iter().find(|r| r.0 == p.range) else {
        return Err("range must be hour, day or 30d");
    };
    let group = match p.group.as_str() {
        "tenant" => GroupBy::Tenant,
        "model" => GroupBy::Model,
        "key" => GroupBy::Key,
        _ => return Err("group must be tenant, model or key"),
    };
    // Up to and with the minute now is in (ranges end before `to`).
    let to = Timestamp::from_millis(now.as_millis() + 1);
    let range = TimeRange::new(Timestamp::from_millis(to.as_millis() - len), to);
    Ok((range, step, group))
}

fn label_of(group: &str) -> String {
    if group.is_empty() {
        "(no key)".to_owned()
    } else {
        group.to_owned()
    }
}

/// `GET /ui/usage`.
pub(crate) async fn page(
    _op: Operator,
    State(ui): State<Ui>,
    Query(p): Query<UsageParams>,
) -> Response {
    let (range, step, group) = match parse(&p, ui.clock.now()) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let usage = &ui.state.usage;
    let (points, rows) = match (
        usage.series(range, step, None).await,
        usage.totals(range, group, &UsageScope::default()).await,
    ) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return failed(&e),
    };
    let series: Vec<Row> = points
        .iter()
        .map(|pt| Row::of(pt.time.to_string(), &pt.usage))
        .collect();
    let groups = rows.len();
    let mut top: Vec<Row> = rows
        .iter()
        .map(|r| Row::of(label_of(&r.group), &r.usage))
        .collect();
    top.sort_by(|a, b| b.tokens().cmp(&a.tokens()).then(a.label.cmp(&b.label)));
    top.truncate(TOP);
    let chart_of = |rows: &[Row]| {
        bars(
            &rows
                .iter()
                .map(|r| (r.label.clone(), r.tokens() as f64))
                .collect::<Vec<_>>(),
        )
    };
    render(&UsagePage {
        title: "Usage",
        ranges: RANGES.iter().map(|r| (r.0, r.1)).collect(),
        csv: format!("/ui/usage.csv?range={}&group={}", p.range, p.group),
        series_chart: chart_of(&series),
        top_chart: chart_of(&top),
        range: p.range,
        group: p.group,
        series,
        top,
        groups,
    })
}

/// A CSV field: quoted when it must be, and never read as a formula by a
/// spreadsheet (a leading `=`, `+`, `-`, `@` is prefixed with `'`).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `GET /ui/usage.csv`: every group's totals over the range.
pub(crate) async fn csv(
    _op: Operator,
    State(ui): State<Ui>,
    Query(p): Query<UsageParams>,
) -> Response {
    let (range, _, group) = match parse(&p, ui.clock.now()) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let rows = match ui
        .state
        .usage
        .totals(range, group, &UsageScope::default())
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let mut out = format!(
        "{},requests,errors,cancelled,input_tokens,output_tokens,cached_tokens,cost_usd\n",
        p.group
    );
    for r in &rows {
        let u = &r.usage;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{:.9}\n",
            csv_field(&r.group),
            u.requests,
            u.errors,
            u.cancelled,
            u.input_tokens,
            u.output_tokens,
            u.cached_tokens,
            u.cost("USD")
        ));
    }
    (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"maas-usage-{}-by-{}.csv\"",
                    p.range, p.group
                ),
            ),
        ],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("acme"), "acme");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("-1,2"), "\"'-1,2\"");
    }
}
