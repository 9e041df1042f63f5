//! `weftctl graph --format svg`: the service graph drawn by weftctl itself,
//! so a picture needs no Graphviz on the user's machine.
//!
//! A small layered layout, deterministic (the same edges give the same
//! bytes): workloads in columns by rank, callers left of their callees
//! (Kahn's order; a cycle is broken where the fewest arrows turn back),
//! each column ordered by where its callers sit so that arrows cross less.
//! Arrows between columns are straight; an arrow back to an earlier or the
//! same column bows below the boxes, and a workload calling itself gets a
//! loop above its box. Every arrow carries its label (rate, 5xx share, p99,
//! bytes, mTLS) and a `<title>` a browser shows on hover.
//!
//! No pure-Rust Graphviz replacement fits (layout-rs, the only maintained
//! candidate, last released in April 2025, panics on input it does not
//! expect and iterates hash maps while writing), and this graph is simple:
//! tens of workloads, two protocols.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::top::{Edge, edge_label};
use crate::format;

/// Box height, and vertical distance between the tops of two boxes.
const NODE_HEIGHT: f64 = 32.0;
const ROW_PITCH: f64 = 80.0;
/// Estimated width of one character at the font size used (12px sans-serif
/// for names, 11px for labels); generous, so text stays inside its box.
const NAME_CHAR: f64 = 7.5;
const LABEL_CHAR: f64 = 6.5;
/// Room around the picture and between a column and its arrows' labels.
const MARGIN: f64 = 20.0;
const MIN_GAP: f64 = 80.0;
/// Vertical distance between two arrows of the same pair (TCP and HTTP).
const PARALLEL: f64 = 16.0;

const MTLS_COLOUR: &str = "#1b7f3b";
const PLAINTEXT_COLOUR: &str = "#c62828";

/// The SVG of `edges` (a complete document, ending in a newline).
pub fn svg(edges: &[Edge]) -> String {
    let layout = Layout::new(edges);
    let mut out = String::new();
    let (width, height) = layout.size();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    out.push_str("<title>weft service graph</title>\n");
    out.push_str(&format!(
        "<defs>\n{}{}</defs>\n",
        marker("arrow-mtls", MTLS_COLOUR),
        marker("arrow-plaintext", PLAINTEXT_COLOUR)
    ));
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    out.push('\n');
    if edges.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{MARGIN}" y="{:.1}" font-size="12">no traffic between workloads in the window</text>"#,
            MARGIN + 14.0
        );
    }
    for (i, e) in edges.iter().enumerate() {
        layout.edge(&mut out, e, i);
    }
    for name in layout.index.keys() {
        layout.node(&mut out, name);
    }
    out.push_str("</svg>\n");
    out
}

/// An arrowhead in `colour`, for `marker-end`.
fn marker(id: &str, colour: &str) -> String {
    format!(
        r#"<marker id="{id}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="{colour}"/></marker>
"#
    )
}

/// Text for XML content and attribute values: names come from the
/// cluster's labels and may hold anything.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newline are not XML.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The label an arrow shows: `edge_label` (what the DOT has), the bytes per
/// second of TCP, and whether it is mutual TLS (the DOT says it by colour
/// only; a picture printed in black and white should still say it).
fn svg_label(e: &Edge) -> String {
    let mut label = edge_label(e);
    if let Some(b) = e.bytes_per_second {
        label.push_str(&format!(", {}/s", format::bytes(b as u64)));
    }
    label.push_str(if e.mtls { ", mTLS" } else { ", plaintext" });
    label
}

/// Where every workload goes.
struct Layout {
    /// Workload → (column, row).
    index: BTreeMap<String, (usize, usize)>,
    /// Left edge and width of each column's boxes.
    columns: Vec<(f64, f64)>,
    /// Rows of the tallest column.
    rows: usize,
    /// How far below the boxes arrows back to earlier columns bow.
    below: f64,
    /// For each edge (by position): its place among the edges of the same
    /// pair, and how many there are.
    parallel: Vec<(usize, usize)>,
    /// Room right of the last column for the labels of loops over it.
    overhang: f64,
}

impl Layout {
    fn new(edges: &[Edge]) -> Layout {
        let names: BTreeSet<&str> = edges
            .iter()
            .flat_map(|e| [e.source.as_str(), e.destination.as_str()])
            .collect();
        let names: Vec<&str> = names.into_iter().collect();
        let id = |name: &str| names.binary_search(&name).unwrap_or(0);
        let pairs: Vec<(usize, usize)> = edges
            .iter()
            .map(|e| (id(&e.source), id(&e.destination)))
            .collect();
        let rank = ranks(names.len(), &pairs);

        // Columns, each in the order of its callers' average row (first
        // column, and workloads with no caller in an earlier column: by
        // name, after the others).
        let depth = rank.iter().max().map_or(0, |r| r + 1);
        let mut row_of = vec![0usize; names.len()];
        let mut columns_of: Vec<Vec<usize>> = Vec::with_capacity(depth);
        for column in 0..depth {
            let mut members: Vec<(f64, usize)> = (0..names.len())
                .filter(|&v| rank[v] == column)
                .map(|v| {
                    let callers: Vec<f64> = pairs
                        .iter()
                        .filter(|&&(s, d)| d == v && s != v && rank[s] < column)
                        .map(|&(s, _)| row_of[s] as f64)
                        .collect();
                    let centre = if callers.is_empty() {
                        f64::INFINITY
                    } else {
                        callers.iter().sum::<f64>() / callers.len() as f64
                    };
                    (centre, v)
                })
                .collect();
            // Names are sorted, so ties fall back to the name.
            members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (row, &(_, v)) in members.iter().enumerate() {
                row_of[v] = row;
            }
            columns_of.push(members.into_iter().map(|(_, v)| v).collect());
        }

        // Column widths from their names; the gap after a column from the
        // labels of the arrows that leave it forwards.
        let mut columns = Vec::with_capacity(depth);
        let mut x = MARGIN;
        for (column, members) in columns_of.iter().enumerate() {
            let widest = members
                .iter()
                .map(|&v| names[v].chars().count())
                .max()
                .unwrap_or(0);
            let width = widest as f64 * NAME_CHAR + 24.0;
            columns.push((x, width));
            let label = edges
                .iter()
                .zip(&pairs)
                .filter(|(_, (s, d))| rank[*s] == column && rank[*d] > column)
                .map(|(e, _)| svg_label(e).chars().count())
                .max()
                .unwrap_or(0);
            x += width + (label as f64 * LABEL_CHAR + 2.0 * MARGIN).max(MIN_GAP);
        }

        // Arrows back bow further the more columns they span.
        let back_span = pairs
            .iter()
            .filter(|&&(s, d)| s != d && rank[d] <= rank[s])
            .map(|&(s, d)| rank[s] - rank[d] + 1)
            .max();
        let below = back_span.map_or(0.0, |span| 30.0 + 15.0 * span as f64);

        let mut seen: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let mut parallel: Vec<(usize, usize)> = pairs
            .iter()
            .map(|pair| {
                let n = seen.entry(*pair).or_default();
                *n += 1;
                (*n - 1, 0)
            })
            .collect();
        for (p, pair) in parallel.iter_mut().zip(&pairs) {
            p.1 = seen[pair];
        }

        let last = depth.saturating_sub(1);
        let overhang = edges
            .iter()
            .zip(&pairs)
            .filter(|(_, (s, d))| s == d && rank[*s] == last)
            .map(|(e, _)| svg_label(e).chars().count() as f64 * LABEL_CHAR / 2.0)
            .fold(0.0, f64::max);

        Layout {
            overhang,
            index: names
                .iter()
                .enumerate()
                .map(|(v, name)| (name.to_string(), (rank[v], row_of[v])))
                .collect(),
            rows: columns_of.iter().map(Vec::len).max().unwrap_or(0),
            columns,
            below,
            parallel,
        }
    }

    /// Width and height of the whole picture.
    fn size(&self) -> (f64, f64) {
        let width = self
            .columns
            .last()
            .map_or(400.0, |(x, w)| (x + w + MARGIN + self.overhang).max(400.0));
        let height = if self.rows == 0 {
            2.0 * MARGIN + 20.0
        } else {
            // A loop above the first row needs room.
            2.0 * MARGIN + 30.0 + (self.rows - 1) as f64 * ROW_PITCH + NODE_HEIGHT + self.below
        };
        (width, height)
    }

    /// Left, top and width of a workload's box.
    fn place(&self, name: &str) -> (f64, f64, f64) {
        let (column, row) = self.index.get(name).copied().unwrap_or((0, 0));
        let (x, width) = self.columns.get(column).copied().unwrap_or((MARGIN, 0.0));
        (x, MARGIN + 30.0 + row as f64 * ROW_PITCH, width)
    }

    fn node(&self, out: &mut String, name: &str) {
        let (x, y, width) = self.place(name);
        let name = escape(name);
        let _ = writeln!(
            out,
            r##"<g class="node"><title>{name}</title><rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{NODE_HEIGHT:.1}" rx="6" fill="#f5f7fa" stroke="#37474f"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" dominant-baseline="central">{name}</text></g>"##,
            x + width / 2.0,
            y + NODE_HEIGHT / 2.0
        );
    }

    fn edge(&self, out: &mut String, e: &Edge, i: usize) {
        let (sx, sy, sw) = self.place(&e.source);
        let (dx, dy, dw) = self.place(&e.destination);
        let (nth, of) = self.parallel.get(i).copied().unwrap_or((0, 1));
        let shift = (nth as f64 - (of.max(1) - 1) as f64 / 2.0) * PARALLEL;
        let (colour, dash, arrow) = if e.mtls {
            (MTLS_COLOUR, "", "arrow-mtls")
        } else {
            (
                PLAINTEXT_COLOUR,
                r#" stroke-dasharray="6 4""#,
                "arrow-plaintext",
            )
        };
        let label = svg_label(e);
        let (path, mut lx, ly) = if e.source == e.destination {
            // A loop over the box's top.
            let cx = sx + sw / 2.0 + shift * 2.0;
            let path = format!(
                "M {:.1} {sy:.1} C {:.1} {:.1} {:.1} {:.1} {:.1} {sy:.1}",
                cx - 8.0,
                cx - 24.0,
                sy - 28.0,
                cx + 24.0,
                sy - 28.0,
                cx + 8.0
            );
            (path, cx, sy - 24.0)
        } else if dx > sx {
            // Forwards: right side to left side, straight.
            let (x1, y1) = (sx + sw, sy + NODE_HEIGHT / 2.0 + shift);
            let (x2, y2) = (dx, dy + NODE_HEIGHT / 2.0 + shift);
            (
                format!("M {x1:.1} {y1:.1} L {x2:.1} {y2:.1}"),
                (x1 + x2) / 2.0,
                (y1 + y2) / 2.0 - 4.0,
            )
        } else {
            // Backwards or within a column: bottom to bottom, bowing below
            // every box.
            let (x1, y1) = (sx + sw / 2.0 + shift, sy + NODE_HEIGHT);
            let (x2, y2) = (dx + dw / 2.0 + shift, dy + NODE_HEIGHT);
            let bottom = self.size().1 - MARGIN - 4.0;
            (
                format!(
                    "M {x1:.1} {y1:.1} C {x1:.1} {bottom:.1} {x2:.1} {bottom:.1} {x2:.1} {y2:.1}"
                ),
                (x1 + x2) / 2.0,
                // The curve's lowest point, just above it.
                0.75 * bottom + 0.125 * (y1 + y2) - 4.0,
            )
        };
        // A label wider than its loop or curve stays inside the picture.
        lx = lx.max(MARGIN + label.chars().count() as f64 * LABEL_CHAR / 2.0);
        let title = escape(&format!("{} → {}: {label}", e.source, e.destination));
        let _ = writeln!(
            out,
            r#"<g class="edge {}"><title>{title}</title><path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"{dash} marker-end="url(#{arrow})"/><text x="{lx:.1}" y="{ly:.1}" font-size="11" text-anchor="middle" fill="{colour}">{}</text></g>"#,
            if e.mtls { "mtls" } else { "plaintext" },
            escape(&label)
        );
    }
}

/// Each workload's column: 0 for those nobody calls, else one more than
/// its furthest caller. Kahn's algorithm on `pairs` (source, destination
/// indices into `n` workloads); when only cycles are left, one workload of
/// them goes next, and the arrows into it become arrows back.
fn ranks(n: usize, pairs: &[(usize, usize)]) -> Vec<usize> {
    let mut waiting = vec![0usize; n];
    for &(s, d) in pairs {
        if s != d {
            waiting[d] += 1;
        }
    }
    let mut rank = vec![0usize; n];
    let mut done = vec![false; n];
    loop {
        let mut next: Vec<usize> = (0..n).filter(|&v| !done[v] && waiting[v] == 0).collect();
        if next.is_empty() {
            // Only cycles left: the workload with the most calls out less
            // calls in among them goes first (Eades, Lin and Smyth's greedy
            // choice: the fewest arrows turn back), the first by name on a tie.
            let remaining = |v: usize| -> i64 {
                pairs
                    .iter()
                    .filter(|&&(s, d)| s != d && !done[s] && !done[d])
                    .map(|&(s, d)| i64::from(s == v) - i64::from(d == v))
                    .sum()
            };
            let best = (0..n)
                .filter(|&v| !done[v])
                .map(|v| (remaining(v), std::cmp::Reverse(v)))
                .max();
            match best {
                Some((_, std::cmp::Reverse(v))) => next.push(v),
                None => break,
            }
        }
        for &v in &next {
            done[v] = true;
        }
        for &v in &next {
            for &(s, d) in pairs {
                if s == v && d != v && !done[d] {
                    rank[d] = rank[d].max(rank[v] + 1);
                    waiting[d] = waiting[d].saturating_sub(1);
                }
            }
        }
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(source: &str, destination: &str, protocol: &str, mtls: bool) -> Edge {
        Edge {
            source: source.into(),
            destination: destination.into(),
            protocol: protocol.into(),
            mtls,
            ..Edge::default()
        }
    }

    /// A small mesh: a chain, two protocols on one pair, plaintext, a call
    /// back, a workload calling itself, and a name that needs escaping.
    fn mesh() -> Vec<Edge> {
        vec![
            Edge {
                requests_per_second: Some(12.5),
                error_rate: Some(0.02),
                p99_ms: Some(38.25),
                ..edge("shop/frontend", "shop/cart", "http", true)
            },
            Edge {
                connections_per_second: Some(2.0),
                bytes_per_second: Some(2048.0),
                ..edge("shop/frontend", "shop/cart", "tcp", true)
            },
            Edge {
                connections_per_second: Some(1.0),
                refused: 3.0,
                ..edge("shop/cart", "db/<redis & \"co\">", "tcp", false)
            },
            Edge {
                requests_per_second: Some(0.5),
                error_rate: Some(0.0),
                ..edge("db/<redis & \"co\">", "shop/frontend", "http", true)
            },
            Edge {
                connections_per_second: Some(4.0),
                ..edge("ops/cron", "ops/cron", "tcp", true)
            },
        ]
    }

    /// Every element's text, joined, as an XML reader sees it (entities
    /// decoded).
    fn texts(doc: &roxmltree::Document<'_>, tag: &str) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name(tag))
            .map(|n| n.text().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn the_svg_parses_and_names_every_workload_and_labels_every_arrow() {
        let picture = svg(&mesh());
        let doc = roxmltree::Document::parse(&picture).expect("the SVG is well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let shown = texts(&doc, "text");
        for name in [
            "shop/frontend",
            "shop/cart",
            "db/<redis & \"co\">",
            "ops/cron",
        ] {
            assert_eq!(
                shown.iter().filter(|t| *t == name).count(),
                1,
                "one box names {name}: {shown:?}"
            );
        }
        for label in [
            "http 12.5 req/s, 2.0% 5xx, p99 38.2ms, mTLS",
            "tcp 2.0 conn/s, 2.0KiB/s, mTLS",
            "tcp 1.0 conn/s, 3 refused, plaintext",
            "http 0.5 req/s, 0.0% 5xx, mTLS",
            "tcp 4.0 conn/s, mTLS",
        ] {
            assert!(shown.iter().any(|t| t == label), "{label}: {shown:?}");
        }
        let edges: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("class").is_some_and(|c| c.starts_with("edge")))
            .collect();
        assert_eq!(edges.len(), 5);
        assert_eq!(
            edges
                .iter()
                .filter(|n| n.attribute("class") == Some("edge plaintext"))
                .count(),
            1
        );
        assert!(texts(&doc, "title").contains(
            &"shop/cart → db/<redis & \"co\">: tcp 1.0 conn/s, 3 refused, plaintext".to_string()
        ));
    }

    #[test]
    fn names_are_escaped_for_xml() {
        let picture = svg(&mesh());
        assert!(
            picture.contains("db/&lt;redis &amp; &quot;co&quot;&gt;"),
            "{picture}"
        );
        assert!(!picture.contains("<redis"), "{picture}");
        assert_eq!(escape("a'b\u{1}c"), "a&apos;b\u{fffd}c");
    }

    #[test]
    fn the_same_edges_give_the_same_bytes_whatever_their_order() {
        let edges = mesh();
        let first = svg(&edges);
        assert_eq!(first, svg(&edges));
        // Layout does not depend on the order the proxies' series came in
        // (the edges' own order only orders the document's elements).
        let mut reversed = edges.clone();
        reversed.reverse();
        let layout = Layout::new(&edges);
        let other = Layout::new(&reversed);
        assert_eq!(layout.index, other.index);
        assert_eq!(layout.columns, other.columns);
    }

    #[test]
    fn callers_stand_left_of_their_callees_and_cycles_still_place_everyone() {
        let layout = Layout::new(&mesh());
        let column = |name: &str| layout.index[name].0;
        // The cycle frontend → cart → db → frontend breaks before
        // frontend, which calls out most: one arrow (db → frontend) turns
        // back.
        assert_eq!(column("shop/frontend"), 0);
        assert_eq!(column("shop/cart"), 1);
        assert_eq!(column("db/<redis & \"co\">"), 2);
        assert_eq!(column("ops/cron"), 0);
        assert!(layout.below > 0.0, "the arrow back bows below");
        // The two arrows of one pair are drawn apart.
        assert_eq!(layout.parallel[0], (0, 2));
        assert_eq!(layout.parallel[1], (1, 2));
        assert_eq!(ranks(3, &[(0, 1), (1, 2), (0, 2)]), vec![0, 1, 2]);
    }

    #[test]
    fn no_traffic_is_still_a_picture() {
        let picture = svg(&[]);
        let doc = roxmltree::Document::parse(&picture).expect("well-formed");
        assert!(
            texts(&doc, "text")
                .iter()
                .any(|t| t.starts_with("no traffic"))
        );
    }
}
