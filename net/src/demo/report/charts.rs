//! The report's four charts, each drawn with plotters' SVG backend into a [`Chart`]: the
//! SVG text and the caption printed under it.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::super::outcome::{duration, LoadSample};
use super::super::DemoError;
use super::{PolicyRun, ReportInput};

/// One chart: its SVG and its caption.
pub(super) struct Chart {
    pub(super) svg: String,
    pub(super) caption: String,
}

/// One colour per policy, in the table's order (distinct on white, colour-blind aware).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn colour(policy: usize) -> RGBColor {
    COLOURS[policy % COLOURS.len()]
}

const WIDTH: u32 = 1000;
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Draws with `draw` on an SVG canvas of `size` and returns the SVG text.
fn svg(size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<String, DemoError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let drawn = root.fill(&WHITE).and_then(|()| draw(&root));
        drawn.and_then(|()| root.present()).map_err(|e| DemoError::Report(format!("drawing a chart: {e}")))?;
    }
    Ok(svg)
}

/// Draws `chart`'s legend at `position`, boxed as every chart's is.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
}

/// Horizontal bars, one row per policy (the first at the top), on `x_range`; `bars` gives
/// each policy's bars as `(from, to, colour)`, later ones drawn over earlier ones, and
/// `value_label` the text after them. `reference` is a dashed vertical line and its label.
struct BarRows<'a> {
    title: &'a str,
    x_desc: &'a str,
    x_range: std::ops::Range<f64>,
    labels: Vec<&'a str>,
    bars: Vec<Vec<(f64, f64, RGBAColor)>>,
    value_label: Vec<String>,
    /// The x axis' labels.
    x_label: fn(f64) -> String,
    reference: Option<(f64, &'a str)>,
}

fn bar_rows(rows: &BarRows<'_>) -> Result<String, DemoError> {
    let n = rows.labels.len() as i32;
    // One row per policy, and an empty one on top for the reference line's label.
    let height = 110 + 34 * (rows.labels.len() as u32 + u32::from(rows.reference.is_some()));
    // Segments of an integer range include its end: rows 0..top are `0..top - 1`.
    let top = n + i32::from(rows.reference.is_some());
    svg((WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(rows.title, (FONT, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(250)
            .build_cartesian_2d(rows.x_range.clone(), (0..(top - 1).max(1)).into_segmented())?;
        let labels = &rows.labels;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .disable_y_mesh()
            .y_labels(top as usize)
            .y_label_formatter(&|v| match v {
                // Row 0 at the top.
                SegmentValue::CenterOf(row) if *row < n => {
                    labels.get((n - 1 - row) as usize).map_or_else(String::new, |l| (*l).to_owned())
                }
                _ => String::new(),
            })
            .y_label_style((FONT, 14))
            .x_desc(rows.x_desc)
            .x_label_formatter(&|x| (rows.x_label)(*x))
            .x_label_style((FONT, 13))
            .draw()?;
        for (i, bars) in rows.bars.iter().enumerate() {
            let row = n - 1 - i as i32;
            chart.draw_series(bars.iter().map(|&(from, to, colour)| {
                let mut bar = Rectangle::new(
                    [(from, SegmentValue::Exact(row)), (to, SegmentValue::Exact(row + 1))],
                    colour.filled(),
                );
                bar.set_margin(5, 5, 0, 0);
                bar
            }))?;
            // Value labels start right of the reference line, so that it never crosses them.
            let end = bars.iter().map(|b| b.1).fold(rows.reference.map_or(0.0, |r| r.0), f64::max);
            let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                rows.value_label[i].clone(),
                (end + (rows.x_range.end - rows.x_range.start) * 0.006, SegmentValue::CenterOf(row)),
                style,
            )))?;
        }
        if let Some((x, label)) = rows.reference {
            // The line through every row; its label in the empty row on top, beside it.
            let line = [(x, SegmentValue::Exact(0)), (x, SegmentValue::Exact(n + 1))];
            chart.draw_series(DashedLineSeries::new(line, 6, 4, BLACK.stroke_width(2)))?;
            let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            let at = (x + (rows.x_range.end - rows.x_range.start) * 0.008, SegmentValue::CenterOf(n));
            chart.draw_series(std::iter::once(Text::new(label.to_owned(), at, style)))?;
        }
        Ok(())
    })
}

/// (a) Hit rate per policy, the ceiling a dashed line.
pub(super) fn hit_rates(input: &ReportInput<'_>) -> Result<Chart, DemoError> {
    let percent = |rate: f64| rate * 100.0;
    let top = input.policies.iter().map(|p| p.hit_rate).fold(input.ceiling_hit_rate, f64::max);
    let ceiling = input.ceiling_hit_rate.max(f64::MIN_POSITIVE);
    let svg = bar_rows(&BarRows {
        title: "Prefix-cache hit rate per policy",
        x_desc: "hit rate (% of prompt blocks reused)",
        x_range: 0.0..(percent(top) * 1.4).max(1.0),
        labels: input.policies.iter().map(|p| p.label).collect(),
        bars: (input.policies.iter().enumerate())
            .map(|(i, p)| vec![(0.0, percent(p.hit_rate), colour(i).to_rgba())])
            .collect(),
        value_label: (input.policies.iter())
            .map(|p| format!("{:.1}% ({:.2} of the ceiling)", percent(p.hit_rate), p.hit_rate / ceiling))
            .collect(),
        x_label: |x| format!("{x:.0}%"),
        reference: Some((
            percent(input.ceiling_hit_rate),
            &format!("{}: {:.1}%", input.ceiling_label, percent(input.ceiling_hit_rate)),
        )),
    })?;
    Ok(Chart {
        svg,
        caption: format!(
            "Prompt blocks the simulated engines reused over blocks requested, per policy. The dashed line is the \
             {}: what one cache of unlimited size that every request reads would reuse, the most any router can.",
            input.ceiling_label
        ),
    })
}

/// Points of a CDF of `values` (any order): at most about `points` of them.
pub(super) fn cdf_points(values: &[u64], points: usize) -> Vec<(u64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Vec::new();
    }
    let last = sorted.len() - 1;
    let step = (sorted.len() / points.max(1)).max(1);
    let mut cdf: Vec<(u64, f64)> =
        (0..sorted.len()).step_by(step).map(|i| (sorted[i], (i + 1) as f64 / sorted.len() as f64)).collect();
    if cdf.last().is_some_and(|&(_, share)| share < 1.0) {
        cdf.push((sorted[last], 1.0));
    }
    cdf
}

/// TTFTs below this are drawn at it (the log axis has no zero): 1 ms.
const TTFT_FLOOR_US: u64 = 1_000;

/// (b) The TTFT CDF of each policy, log time axis.
pub(super) fn ttft_cdf(input: &ReportInput<'_>) -> Result<Chart, DemoError> {
    let longest = input.policies.iter().flat_map(|p| p.ttft_us.iter().copied()).max().unwrap_or(0);
    let x_end = (longest.max(TTFT_FLOOR_US * 10) as f64 * 1.5) / 1000.0;
    let svg = svg((WIDTH, 520), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Time to first token: CDF per policy", (FONT, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d((TTFT_FLOOR_US as f64 / 1000.0..x_end).log_scale(), 0.0..100.0)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_desc("simulated TTFT (log scale)")
            .y_desc("requests at or below")
            .x_label_formatter(&|ms| duration((ms * 1000.0).round() as u64))
            .y_label_formatter(&|share| format!("{share:.0}%"))
            .x_label_style((FONT, 13))
            .y_label_style((FONT, 13))
            .draw()?;
        for (i, policy) in input.policies.iter().enumerate() {
            let points = cdf_points(policy.ttft_us, 600)
                .into_iter()
                .map(|(us, share)| (us.max(TTFT_FLOOR_US) as f64 / 1000.0, share * 100.0));
            let style = colour(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(policy.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })?;
    Ok(Chart {
        svg,
        caption: format!(
            "Share of requests whose simulated time to first token (queueing behind the rank's earlier prefills, \
             then the uncached part of the prompt) is at most x. Further left is better; TTFTs under {} are drawn \
             at {}.",
            duration(TTFT_FLOOR_US),
            duration(TTFT_FLOOR_US)
        ),
    })
}

/// The band of one load panel: per sample, minutes since the first sample and the least,
/// mean and most active requests over the ranks.
fn load_band(samples: &[LoadSample]) -> Vec<(f64, u64, f64, u64)> {
    let start = samples.first().map_or(0, |s| s.at_ms);
    samples
        .iter()
        .map(|s| {
            let min = s.active.iter().copied().min().unwrap_or(0);
            let max = s.active.iter().copied().max().unwrap_or(0);
            let mean = s.active.iter().sum::<u64>() as f64 / s.active.len().max(1) as f64;
            ((s.at_ms - start) as f64 / 60_000.0, min, mean, max)
        })
        .collect()
}

/// (c) Active requests per rank over trace time, for the chosen policies side by side.
pub(super) fn load_over_time(input: &ReportInput<'_>) -> Result<Chart, DemoError> {
    let panels: Vec<(usize, &PolicyRun<'_>)> =
        input.load_panels.iter().filter_map(|&i| input.policies.get(i).map(|p| (i, p))).collect();
    let bands: Vec<_> = panels.iter().map(|(_, p)| load_band(p.load_over_time)).collect();
    let y_end = bands.iter().flatten().map(|b| b.3).max().unwrap_or(0).max(1) as f64 * 1.1;
    let x_end = bands.iter().flatten().map(|b| b.0).fold(0.0, f64::max).max(1.0 / 60.0);
    let ranks = panels.first().and_then(|(_, p)| p.load_over_time.first()).map_or(0, |s| s.active.len());
    let svg = svg((WIDTH, 420), |root| {
        let areas = root.split_evenly((1, panels.len().max(1)));
        for ((area, (i, policy)), band) in areas.iter().zip(&panels).zip(&bands) {
            let mut chart = ChartBuilder::on(area)
                .caption(policy.label, (FONT, 18))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..x_end, 0.0..y_end)?;
            chart
                .configure_mesh()
                .light_line_style(TRANSPARENT)
                .x_desc("trace time (minutes)")
                .y_desc("active requests on a rank")
                .y_label_formatter(&|requests| format!("{requests:.0}"))
                .x_label_style((FONT, 13))
                .y_label_style((FONT, 13))
                .draw()?;
            let c = colour(*i);
            let outline: Vec<(f64, f64)> =
                band.iter().map(|b| (b.0, b.3 as f64)).chain(band.iter().rev().map(|b| (b.0, b.1 as f64))).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(outline, c.mix(0.25).filled())))?
                .label("least..most over the ranks")
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.mix(0.25).filled()));
            chart
                .draw_series(LineSeries::new(band.iter().map(|b| (b.0, b.2)), c.stroke_width(2)))?
                .label("mean over the ranks")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    })?;
    Ok(Chart {
        svg,
        caption: format!(
            "Requests each of the {ranks} ranks holds (routed and not yet finished decoding) over trace time, \
             sampled {} times: the shaded band runs from the least to the most loaded rank, the line is the mean. \
             A narrow band is an even spread; both panels share one scale.",
            bands.first().map_or(0, Vec::len)
        ),
    })
}

/// (d) Cache taken: cached blocks on the chosen ranks against the most any candidate held.
pub(super) fn cache_taken(input: &ReportInput<'_>) -> Result<Chart, DemoError> {
    let thousands = |blocks: u64| blocks as f64 / 1000.0;
    let top = input.policies.iter().map(|p| p.best_overlap_blocks.max(p.chosen_overlap_blocks)).max().unwrap_or(0);
    let svg = bar_rows(&BarRows {
        title: "Cache taken: overlap achieved against available",
        x_desc: "cached prompt blocks, summed over the decisions (thousands)",
        x_range: 0.0..(thousands(top) * 1.3).max(0.01),
        labels: input.policies.iter().map(|p| p.label).collect(),
        bars: (input.policies.iter().enumerate())
            .map(|(i, p)| {
                vec![
                    (0.0, thousands(p.best_overlap_blocks), colour(i).mix(0.25)),
                    (0.0, thousands(p.chosen_overlap_blocks), colour(i).to_rgba()),
                ]
            })
            .collect(),
        value_label: (input.policies.iter())
            .map(|p| {
                let taken = p.chosen_overlap_blocks as f64 / p.best_overlap_blocks.max(1) as f64;
                format!("{:.1}% taken", taken * 100.0)
            })
            .collect(),
        x_label: |x| format!("{x:.0}"),
        reference: None,
    })?;
    Ok(Chart {
        svg,
        caption: "Per policy, summed over its decisions: the pale bar is the most cached blocks any candidate rank \
                  held when the router decided (available), the solid bar the cached blocks on the rank it chose \
                  (achieved). The gap is hit rate the policy left on the table, traded for load balance or missed."
            .to_owned(),
    })
}
