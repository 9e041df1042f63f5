//! How results are shown: aligned tables for people, JSON or YAML documents
//! for scripts, and `--watch`, which renders again every interval.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table as Grid, presets};
use serde::Serialize;

use crate::args::{Format, WatchArgs};
use crate::exit::{CliError, Outcome, Result};

/// A table under construction: a header and rows of text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The rows.
    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }

    /// Renders `kubectl get` style: no borders, columns two spaces apart,
    /// never wrapped (a script may still `awk` it, a person may `less -S`).
    pub fn render(&self) -> String {
        let mut grid = Grid::new();
        grid.load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(self.header.clone());
        for row in &self.rows {
            grid.add_row(row.clone());
        }
        let last = self.header.len().saturating_sub(1);
        for (i, column) in grid.column_iter_mut().enumerate() {
            column.set_padding((0, if i == last { 0 } else { 2 }));
        }
        let mut out: String = grid
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
        out
    }
}

/// Renders `value` as the format asks: `table` builds the table view.
pub fn render<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(bool) -> Table,
) -> Result<String> {
    match format {
        Format::Table => Ok(table(false).render()),
        Format::Wide => Ok(table(true).render()),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value).map_err(CliError::other)?;
            s.push('\n');
            Ok(s)
        }
        Format::Yaml => weft_api::yaml::to_string(value).map_err(CliError::other),
    }
}

/// Prints `text` to stdout; a closed pipe (`| head`) ends quietly.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Runs `once` and prints its output; with `--watch`, again every interval
/// until interrupted (a failed round is shown and the watch goes on).
pub async fn watch<F, Fut>(
    format: Format,
    args: &WatchArgs,
    title: &str,
    mut once: F,
) -> Result<Outcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(String, Outcome)>>,
{
    if !args.watch {
        let (text, outcome) = once().await?;
        print(&text);
        return Ok(outcome);
    }
    let interval = Duration::from_secs_f64(args.interval.max(0.1));
    let clear = matches!(format, Format::Table | Format::Wide) && std::io::stdout().is_terminal();
    loop {
        let result = once().await;
        let mut screen = String::new();
        if clear {
            // Home and clear, then a header like watch(1).
            screen.push_str("\x1b[H\x1b[2J");
            screen.push_str(&format!(
                "Every {:.1}s: weftctl {title}    {}\n\n",
                interval.as_secs_f64(),
                crate::format::now_rfc3339()
            ));
        }
        match result {
            Ok((text, _)) => match format {
                // One compact document per line, so `jq` can follow along.
                Format::Json => screen.push_str(&compact_json(&text)),
                Format::Yaml => {
                    screen.push_str("---\n");
                    screen.push_str(&text);
                }
                _ => screen.push_str(&text),
            },
            Err(e) => {
                if clear {
                    screen.push_str(&format!("error: {e}\n"));
                } else {
                    eprintln!("weftctl: {e}");
                }
            }
        }
        print(&screen);
        tokio::time::sleep(interval).await;
    }
}

fn compact_json(pretty: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(pretty) {
        Ok(v) => format!("{v}\n"),
        Err(_) => pretty.to_string(),
    }
}

/// Shows `-` for an empty cell, so columns stay countable.
pub fn cell(s: impl AsRef<str>) -> String {
    let s = s.as_ref();
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned_without_borders() {
        let mut t = Table::new(["NAME", "NODE"]);
        t.row(["a", "node-1"]);
        t.row(["longer-name", "node-2"]);
        let text = t.render();
        assert_eq!(
            text,
            "NAME         NODE\na            node-1\nlonger-name  node-2\n"
        );
    }

    #[test]
    fn documents() {
        #[derive(Serialize)]
        struct V {
            a: u32,
        }
        let json = render(Format::Json, &V { a: 1 }, |_| Table::default()).expect("json");
        assert_eq!(json, "{\n  \"a\": 1\n}\n");
        let yaml = render(Format::Yaml, &V { a: 1 }, |_| Table::default()).expect("yaml");
        assert_eq!(yaml, "a: 1\n");
        assert_eq!(compact_json(&json), "{\"a\":1}\n");
    }
}
