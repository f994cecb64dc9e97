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
