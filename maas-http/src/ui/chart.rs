//! Bar charts as inline SVG, drawn on the server: no script, allowed by
//! the pages' Content-Security-Policy, and always beside a table of the
//! same numbers.

/// One bar, in the chart's own coordinates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    /// Left edge.
    pub(crate) x: f64,
    /// Top edge.
    pub(crate) y: f64,
    /// Width.
    pub(crate) w: f64,
    /// Height.
    pub(crate) h: f64,
    /// What it shows, for its tooltip (`<title>`).
    pub(crate) label: String,
}

/// A chart: its size and its bars (a template draws them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chart {
    /// Width of the view box.
    pub(crate) width: f64,
    /// Height of the view box.
    pub(crate) height: f64,
    /// The bars, left to right.
    pub(crate) bars: Vec<Bar>,
    /// The largest value (the top of the scale).
    pub(crate) max: f64,
}

/// Vertical bars of `values` (label, value), scaled to the largest.
pub(crate) fn bars(values: &[(String, f64)]) -> Chart {
    let (width, height) = (800.0, 200.0);
    let max = values.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let n = values.len().max(1) as f64;
    let step = width / n;
    let bars = values
        .iter()
        .enumerate()
        .map(|(i, (label, v))| {
            let h = if max > 0.0 { height * v / max } else { 0.0 };
            Bar {
                x: i as f64 * step + step * 0.1,
                y: height - h,
                w: step * 0.8,
                h,
                label: format!("{label}: {v}"),
            }
        })
        .collect();
    Chart {
        width,
        height,
        bars,
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_the_largest() {
        let c = bars(&[("a".into(), 10.0), ("b".into(), 5.0), ("c".into(), 0.0)]);
        assert_eq!(c.max, 10.0);
        assert_eq!(c.bars.len(), 3);
        assert_eq!(c.bars[0].h, 200.0);
        assert_eq!(c.bars[1].h, 100.0);
        assert_eq!(c.bars[2].h, 0.0);
        assert_eq!(c.bars[1].label, "b: 5");
        assert!(bars(&[]).bars.is_empty());
    }
}

/// One hour of a tenant's last 24, as the day's table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HourRow {
    /// `YYYY-MM-DD HH:00` (UTC).
    pub(crate) label: String,
    pub(crate) requests: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// Input and output.
    pub(crate) tokens: u64,
    pub(crate) errors: u64,
}

/// One hour's bar in the day's chart (`ui/day.html` draws it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HourBar {
    pub(crate) x: u64,
    pub(crate) y: u64,
    pub(crate) height: u64,
    /// Its tooltip.
    pub(crate) title: String,
    /// Its hour under the axis, every third hour.
    pub(crate) tick: Option<String>,
}

/// A tenant's last 24 UTC hours (the current one last): the chart and the
/// table of the same numbers, for the dashboard's tenant page and the
/// portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Day {
    pub(crate) hours: Vec<HourRow>,
    pub(crate) bars: Vec<HourBar>,
    /// The most tokens of an hour (the top of the scale).
    pub(crate) max: u64,
    /// The tokens of the 24 hours.
    pub(crate) total: u64,
}

impl Day {
    /// No hours (a server that records no usage).
    pub(crate) fn empty() -> Day {
        Day {
            hours: Vec::new(),
            bars: Vec::new(),
            max: 0,
            total: 0,
        }
    }
}

const HOUR_MS: i64 = 3_600_000;
/// The bars' height at most, and one bar's step.
const DAY_H: u64 = 160;
const DAY_STEP: u64 = 24;

/// `tenant`'s last 24 hours of usage up to `now`, from `ledger`.
pub(crate) async fn last_day(
    ledger: &maas_core::UsageLedger,
    tenant: &str,
    now: maas_core::Timestamp,
) -> maas_core::Result<Day> {
    use maas_core::Timestamp;
    use maas_core::usage::{Granularity, TimeRange};
    let first = Granularity::Hour.floor(now).as_millis() - 23 * HOUR_MS;
    let range = TimeRange::new(
        Timestamp::from_millis(first),
        Timestamp::from_millis(first + 24 * HOUR_MS),
    );
    let points = ledger
        .series(range, Granularity::Hour, Some(tenant))
        .await?;
    let hours: Vec<HourRow> = (0..24)
        .map(|i| {
            let at = Timestamp::from_millis(first + i * HOUR_MS);
            let u = points
                .iter()
                .find(|pt| pt.time == at)
                .map(|pt| pt.usage.clone())
                .unwrap_or_default();
            let stamp = at.to_string();
            HourRow {
                label: format!(
                    "{} {}",
                    stamp.get(..10).unwrap_or_default(),
                    stamp.get(11..16).unwrap_or_default()
                ),
                requests: u.requests,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                tokens: u.input_tokens.saturating_add(u.output_tokens),
                errors: u.errors,
            }
        })
        .collect();
    let max = hours.iter().map(|h| h.tokens).max().unwrap_or(0);
    let bars = hours
        .iter()
        .zip(0u64..)
        .map(|(h, i)| {
            let height = h.tokens.saturating_mul(DAY_H) / max.max(1);
            HourBar {
                x: 40 + i * DAY_STEP,
                y: 10 + DAY_H - height,
                height,
                title: format!("{} UTC: {} tokens", h.label, h.tokens),
                tick: i
                    .is_multiple_of(3)
                    .then(|| h.label.get(11..13).unwrap_or_default().to_owned()),
            }
        })
        .collect();
    Ok(Day {
        total: hours.iter().map(|h| h.tokens).sum(),
        hours,
        bars,
        max,
    })
}
