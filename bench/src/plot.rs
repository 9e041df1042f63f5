//! SVG plots of the benches' reports, written next to their JSON.
//!
//! One place for every bench: [`write`] takes a report (the JSON line a
//! bench prints) and draws what that bench measures: mesh against its
//! baseline as bars, the controller's points as lines against the cluster's
//! size. plotters' SVG backend alone is used: SVG text is laid out by the
//! viewer, so no font or system library is needed to build or draw.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

const SIZE: (u32, u32) = (640, 400);
const COLORS: [RGBColor; 4] = [
    RGBColor(0x9e, 0x9e, 0x9e), // the baseline: grey
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Writes `<out>/<bench>.json` and the bench's plots beside it; returns
/// the files written.
pub fn write(out: &Path, report: &Value) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bench = report["bench"].as_str().unwrap_or("bench");
    let json = out.join(format!("{bench}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    let mut files = vec![json];
    let f = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    let svg = |name: &str| out.join(format!("{bench}-{name}.svg"));
    match bench {
        "hbone-loopback" | "l4" => {
            let (what, mut sides, conns) = if bench == "l4" {
                (
                    "pod → pod",
                    vec![("no mesh", "plain"), ("mesh", "mesh")],
                    true,
                )
            } else {
                ("loopback", vec![("TCP", "tcp"), ("HBONE", "hbone")], false)
            };
            if report["bypass_gbps"].is_number() {
                sides.push(("mesh, local-leg bypass", "bypass"));
            }
            files.extend(side_by_side(&svg, &f, what, &sides, conns)?);
        }
        "waypoint" => {
            let targets = [
                ("HAProxy", "haproxy"),
                ("HAProxy + mTLS", "haproxy_tls"),
                ("waypoint", "waypoint"),
            ];
            let present: Vec<_> = targets
                .iter()
                .filter(|(_, key)| report[format!("{key}_rps")].is_number())
                .collect();
            let of = |key: &str, suffix: &str| f(&format!("{key}_{suffix}"));
            files.push(bars(
                &svg("throughput"),
                "HTTP/1.1 keep-alive, L7 policy",
                "requests/s",
                &["requests/s"],
                &present
                    .iter()
                    .map(|(name, key)| (*name, vec![of(key, "rps")]))
                    .collect::<Vec<_>>(),
            )?);
            files.push(bars(
                &svg("latency"),
                "HTTP/1.1 keep-alive, L7 policy",
                "µs",
                &["p50", "p99"],
                &present
                    .iter()
                    .map(|(name, key)| (*name, vec![of(key, "p50_us"), of(key, "p99_us")]))
                    .collect::<Vec<_>>(),
            )?);
        }
        "controller" => {
            let Some(points) = report["points"].as_array() else {
                return Ok(files);
            };
            let series = |key: &str| xy(points, "pods", key);
            let sizes = points
                .iter()
                .map(|p| format!("{}/{}", p["pods"], p["proxies"]))
                .collect::<Vec<_>>()
                .join(", ");
            files.push(lines(
                &svg("rss"),
                &format!("controller RSS (pods/proxies: {sizes})"),
                "pods (one proxy per 10)",
                "MiB",
                &[
                    ("idle after sync", series("idle_rss_mib")),
                    ("peak", series("peak_rss_mib")),
                ],
            )?);
            files.push(lines(
                &svg("propagation"),
                "a pod change reaching every proxy",
                "pods (one proxy per 10)",
                "ms",
                &[
                    ("p50", series("p50_propagation_ms")),
                    ("p99", series("p99_propagation_ms")),
                ],
            )?);
        }
        "idle-tunnels" => {
            let Some(points) = report["points"].as_array() else {
                return Ok(files);
            };
            let rss = |side: &str| xy(points, "connections", &format!("{side}_ztunnel_rss_mib"));
            let series = [
                ("client", "client node's ztunnel"),
                ("server", "server node's ztunnel"),
            ]
            .map(|(side, name)| (name, rss(side)));
            let title = "ztunnel RSS, idle tunnels held open (pod → pod)";
            let x = "concurrent idle tunnels";
            files.push(lines(&svg("rss"), title, x, "MiB", &series)?);
        }
        _ => {}
    }
    Ok(files)
}

/// `(point[x], point[y])` of the points that have both.
fn xy(points: &[Value], x: &str, y: &str) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|p| Some((p[x].as_f64()?, p[y].as_f64()?)))
        .collect()
}

/// A path against its baseline, from the keys `<prefix>_gbps`,
/// `<prefix>_p50_us`, `<prefix>_p99_us` and (with `conns`)
/// `<prefix>_conns_per_sec` of each side: throughput, latency and
/// connection-rate bars.
fn side_by_side(
    svg: &dyn Fn(&str) -> PathBuf,
    f: &dyn Fn(&str) -> f64,
    what: &str,
    sides: &[(&str, &str)],
    conns: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let of = |suffixes: &[&str]| -> Vec<(&str, Vec<f64>)> {
        sides
            .iter()
            .map(|(label, prefix)| {
                let values = suffixes.iter().map(|s| f(&format!("{prefix}_{s}")));
                (*label, values.collect())
            })
            .collect()
    };
    let mut files = vec![
        bars(
            &svg("throughput"),
            &format!("{what}, bulk, one connection"),
            "Gbit/s",
            &["bulk"],
            &of(&["gbps"]),
        )?,
        bars(
            &svg("latency"),
            &format!("{what}, 1 KiB request/response"),
            "µs",
            &["p50", "p99"],
            &of(&["p50_us", "p99_us"]),
        )?,
    ];
    if conns {
        files.push(bars(
            &svg("connections"),
            &format!("{what}, new connections"),
            "connections/s",
            &["connect, 1 byte each way, close"],
            &of(&["conns_per_sec"]),
        )?);
    }
    Ok(files)
}

/// Grouped bars: one group per entry of `groups`, one bar per series in
/// each (the first series is the baseline, drawn grey).
fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[&str],
    series: &[(&str, Vec<f64>)],
) -> anyhow::Result<PathBuf> {
    let finite = series.iter().flat_map(|(_, v)| v).filter(|v| v.is_finite());
    let top = finite.fold(0.0_f64, |a, b| a.max(*b)).max(1e-9) * 1.15;
    let n = groups.len();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = canvas(&root, title, -0.5..(n as f64 - 0.5), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                groups
                    .get(i as usize)
                    .map_or(String::new(), |g| g.to_string())
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()
        .map_err(draw_error)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        // (left edge, value) of this series' bar in each group.
        let bars: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(g, v)| (g as f64 - 0.4 + s as f64 * width, *v))
            .collect();
        chart
            .draw_series(bars.iter().map(|(x0, v)| {
                Rectangle::new([(*x0, 0.0), (x0 + width * 0.9, *v)], color.filled())
            }))
            .map_err(draw_error)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        // The value above each bar: the figure, not only its height.
        let labels = bars
            .iter()
            .map(|(x, v)| Text::new(format_value(*v), (*x, *v + top * 0.02), ("sans-serif", 12)));
        chart.draw_series(labels).map_err(draw_error)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperRight, path)
}

/// Lines with their points marked.
fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<PathBuf> {
    let all = || {
        series
            .iter()
            .flat_map(|(_, v)| v)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let x_max = all().fold(0.0_f64, |a, (x, _)| a.max(*x)).max(1e-9) * 1.05;
    let y_max = all().fold(0.0_f64, |a, (_, y)| a.max(*y)).max(1e-9) * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = canvas(&root, title, 0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(draw_error)?;
    for (s, (name, points)) in series.iter().enumerate() {
        let color = COLORS[(s + 1) % COLORS.len()];
        let points: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(draw_error)?;
        chart
            .draw_series(points.iter().map(|(x, y)| {
                Text::new(
                    format_value(*y),
                    (*x, *y + y_max * 0.02),
                    ("sans-serif", 12),
                )
            }))
            .map_err(draw_error)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperLeft, path)
}

/// A white chart titled `title` over `x` and `y`.
fn canvas<'a, 'p>(
    root: &'a DrawingArea<SVGBackend<'p>, Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> anyhow::Result<ChartContext<'a, SVGBackend<'p>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    root.fill(&WHITE).map_err(draw_error)?;
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(draw_error)
}

/// The legend at `legend`, then the file.
fn finish<'a, 'p: 'a>(
    chart: &mut ChartContext<'a, SVGBackend<'p>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    root: &DrawingArea<SVGBackend<'p>, Shift>,
    legend: SeriesLabelPosition,
    path: &Path,
) -> anyhow::Result<PathBuf> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(path.to_path_buf())
}

fn format_value(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// plotters' errors borrow the backend's error type; keep the message.
fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bench_draws_its_plots() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("weft-bench-plot-{}", std::process::id()));
        let reports = [
            serde_json::json!({"bench": "hbone-loopback", "tcp_gbps": 20.0, "hbone_gbps": 12.5,
                "tcp_p50_us": 10.0, "tcp_p99_us": 20.0, "hbone_p50_us": 30.0, "hbone_p99_us": 60.0}),
            serde_json::json!({"bench": "l4", "plain_gbps": 14.0, "mesh_gbps": 5.0,
                "plain_conns_per_sec": 23000.0, "mesh_conns_per_sec": 5800.0,
                "plain_p50_us": 12.0, "plain_p99_us": 30.0, "mesh_p50_us": 210.0, "mesh_p99_us": 800.0}),
            serde_json::json!({"bench": "waypoint", "haproxy_tls_rps": 50000.0, "waypoint_rps": 40000.0,
                "haproxy_tls_p50_us": 500.0, "haproxy_tls_p99_us": 900.0,
                "waypoint_p50_us": 600.0, "waypoint_p99_us": 950.0}),
            serde_json::json!({"bench": "controller", "points": [
                {"pods": 2000, "proxies": 200, "idle_rss_mib": 50.0, "peak_rss_mib": 80.0,
                 "p50_propagation_ms": 20.0, "p99_propagation_ms": 30.0},
                {"pods": 10000, "proxies": 1000, "idle_rss_mib": 150.0, "peak_rss_mib": 300.0,
                 "p50_propagation_ms": 100.0, "p99_propagation_ms": 150.0}]}),
            serde_json::json!({"bench": "idle-tunnels", "idle_rss_mib": [12.0, 12.0], "points": [
                {"connections": 0, "client_ztunnel_rss_mib": 13.0, "server_ztunnel_rss_mib": 12.5},
                {"connections": 10000, "client_ztunnel_rss_mib": 60.0, "server_ztunnel_rss_mib": 50.0}]}),
        ];
        for report in &reports {
            let files = write(&dir, report)?;
            let plots = match report["bench"].as_str() {
                Some("l4") => 3,
                Some("idle-tunnels") => 1,
                _ => 2,
            };
            assert_eq!(files.len(), 1 + plots, "{report}");
            for svg in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "svg"))
            {
                let text = std::fs::read_to_string(svg)?;
                assert!(text.starts_with("<svg"), "{}", svg.display());
                assert!(
                    text.contains("<text"),
                    "labels are SVG text: {}",
                    svg.display()
                );
            }
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn l4_with_the_bypass_draws_a_third_side() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("weft-bench-plot3-{}", std::process::id()));
        let report = serde_json::json!({"bench": "l4", "plain_gbps": 8.6, "mesh_gbps": 3.7,
            "bypass_gbps": 4.4, "plain_conns_per_sec": 7900.0, "mesh_conns_per_sec": 2500.0,
            "bypass_conns_per_sec": 2200.0, "plain_p50_us": 50.0, "plain_p99_us": 380.0,
            "mesh_p50_us": 280.0, "mesh_p99_us": 2800.0, "bypass_p50_us": 300.0,
            "bypass_p99_us": 3600.0});
        let files = write(&dir, &report)?;
        let throughput = std::fs::read_to_string(dir.join("l4-throughput.svg"))?;
        assert!(
            throughput.contains("local-leg bypass"),
            "the legend names it"
        );
        assert_eq!(files.len(), 4);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
